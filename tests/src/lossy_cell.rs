//! A real nats-server, a coordinator and an in-process node of region `eu` whose media sits
//! behind its `chaos::geo` gateway, and WebRTC clients in the client-only region `eu-lossy`
//! placed there with `GeoNet::place_client`. Such a client announces an address where
//! nothing listens, so the node's only path to it is the one its own ICE checks open through
//! the gateway, across the (eu, eu-lossy) link; plain `eu` clients reach the gateway from the
//! node's own region and cross no impairment. Used by `client_impairment.rs` and
//! `quality.rs`.

use crate::nats::NatsServer;
use crate::{claims, mint, wait_until, Config, NodeHandle};
use chaos::geo::GeoNet;
use chaos::impair::Link;
use chaos::{Client, ClientConfig};
use coordinator::CoordinatorHandle;
use protocol::NodeId;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::Duration;

/// The node's region.
pub const NODE: &str = "eu";
/// The clients' region behind the impaired link.
pub const LOSSY: &str = "eu-lossy";
/// Ports of the node's media range (and of its gateway).
const PORTS: u16 = 40;
const WAIT: Duration = Duration::from_secs(30);

/// The cluster, the geography and the clients' address counter.
pub struct LossyCell {
    _nats: NatsServer,
    _coordinator: CoordinatorHandle,
    pub node: NodeHandle,
    pub net: GeoNet,
    clients: AtomicU8,
}

impl LossyCell {
    /// NATS, a coordinator and node `eu-1` (its config as `tweak` leaves it) behind its
    /// gateway; the (eu, eu-lossy) link is perfect until the test sets it. Returns once the
    /// coordinator sees the node.
    pub async fn start(tweak: impl FnOnce(&mut Config)) -> anyhow::Result<LossyCell> {
        crate::init_logs();
        let nats = NatsServer::start()?;
        let coordinator = coordinator::spawn(coordinator::Config::local(nats.coordinator_url()))?;
        let mut net = GeoNet::new(
            &[NODE, LOSSY],
            Duration::ZERO,
            Duration::ZERO,
            rand::random(),
        )?;
        // Below the ephemeral range, so no client socket takes a gateway's port; another test
        // process may hold a range on the same addresses, so a taken one is skipped.
        let mut ports = None;
        for _ in 0..8 {
            let first = 20_000 + PORTS * rand::Rng::gen_range(&mut rand::thread_rng(), 0..250u16);
            let range = (first, first + PORTS - 1);
            match net.add_node(NODE, 0, range).await {
                Ok(()) => {
                    ports = Some(range);
                    break;
                }
                Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => continue,
                Err(e) => return Err(e.into()),
            }
        }
        let ports = ports.ok_or_else(|| anyhow::anyhow!("no free gateway port range"))?;
        let (bind, announce) = net.node_ips(NODE, 0).expect("the node's region");
        let mut c = Config::local_dev();
        c.node_id = NodeId::new("eu-1").unwrap();
        c.region = NODE.into();
        c.nats_url = Some(nats.node_url("eu-1")?);
        c.resume_grace = Duration::ZERO;
        c.room_empty_grace = Duration::from_millis(300);
        c.udp_ip = bind;
        c.public_ip = Some(announce.to_string());
        c.udp_port = ports.0;
        c.ice_tcp_port = None;
        tweak(&mut c);
        let node = node::spawn(c)?;
        coordinator_sees_a_node(&coordinator, WAIT).await?;
        Ok(LossyCell {
            _nats: nats,
            _coordinator: coordinator,
            node,
            net,
            clients: AtomicU8::new(0),
        })
    }

    /// The (eu, eu-lossy) link.
    pub fn link(&self) -> &Link {
        self.net.link(NODE, LOSSY).expect("the pair exists")
    }

    /// Connects a client in `region` and joins `room` as `user` on the eu node. A client of
    /// the lossy region is placed behind the link; one of the node's region only binds there
    /// (it may reach the node's socket directly: it has no link to cross anyway).
    pub async fn join(&self, region: &str, room: &str, user: &str) -> anyhow::Result<Client> {
        let n = self.clients.fetch_add(1, Ordering::Relaxed);
        let mut config = ClientConfig {
            ice_check_interval: Some(Duration::from_millis(50)),
            ..ClientConfig::default()
        };
        if region == LOSSY {
            assert!(self.net.place_client(&mut config, region, n));
        } else {
            config.bind_ip = self.net.client_ip(region, n).expect("a region of the net");
        }
        let client = Client::connect_with(&self.node.ws_url(), config).await?;
        client
            .join(room, &mint(&self.node, &claims(room, user, 600)))
            .await?;
        Ok(client)
    }
}

/// Waits until `coordinator` is ready and counts a healthy node.
pub async fn coordinator_sees_a_node(
    coordinator: &CoordinatorHandle,
    timeout: Duration,
) -> anyhow::Result<()> {
    wait_until(timeout, "the coordinator to see a healthy node", || async {
        let snap = coordinator.snapshot();
        if snap.ready && snap.nodes.iter().any(|n| n.healthy) {
            Ok(())
        } else {
            Err(format!("{snap:?}"))
        }
    })
    .await
}
