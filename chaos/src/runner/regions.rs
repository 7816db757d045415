//! The runner's regions: a sandbox cluster laid out on a [`GeoNet`] (each region a loopback
//! /24, a delayed link per pair of regions, NATS at home), so a scenario can put members of
//! one room in several regions and partition two regions from each other.
//!
//! ```no_run
//! # async fn demo(mut spec: chaos::sandbox::ClusterSpec) -> anyhow::Result<()> {
//! use chaos::runner::regions::{self, Regions};
//! use std::time::Duration;
//! // eu-1, eu-2 (home, NATS direct), us-1, us-2 (NATS through the eu–us link).
//! let flags = ["--room-empty-grace-secs=1".to_owned()];
//! let regions: Regions = regions::lay_out(
//!     &mut spec,
//!     &[("eu", 2), ("us", 2)],
//!     20_000,
//!     200,
//!     Duration::from_millis(20),
//!     7,
//!     &flags,
//! )
//! .await?;
//! let mut cluster = chaos::sandbox::Cluster::start(spec).await?;
//! let client = regions.client_config("us", 0).unwrap(); // a us client, for us-1 or us-2
//! regions.partition("eu", "us", true)?;
//! // ... media between the regions stops; us's NATS stalls ...
//! regions.partition("eu", "us", false)?;
//! println!("{:?}", regions.pair_stats("eu", "us"));
//! cluster.stop();
//! # Ok(())
//! # }
//! ```
//!
//! The layout:
//! - nodes are `<region>-<k>`, `k` from 1, in the order of `regions` (all of the first
//!   region, then the second's, ...); node `<region>-<k>` is the GeoNet's node `k - 1` of its
//!   region: it binds media on [`GeoNet::node_ips`]'s first address, announces the second,
//!   and its gateway relays every port of its UDP range;
//! - UDP ranges follow one another from `udp_base`, `ports_per_node` each, in node order;
//! - NATS is the spec's single server on a port fixed before the start
//!   ([`crate::sandbox::NatsSpec::port`]); the home region's nodes and every coordinator
//!   dial it directly, every other region's nodes through its proxy across the link with
//!   home ([`GeoNet::nats_url`]). A partition with the home region therefore also stalls
//!   the other region's NATS: its nodes stop heartbeating, as a real cut-off region would;
//! - clients of a region bind on its client addresses ([`Regions::client_config`]);
//!   signalling (WebSocket, HTTP) stays on 127.0.0.1 and crosses no link.
//!
//! What a partition cuts: the media relay between the two regions' nodes and, with the home
//! region, the other region's NATS. It does not cut a client of one region from a node of
//! the other when the node reaches the client's host candidate (its bind address) directly:
//! see the module documentation of [`crate::geo`]. The GeoNet and its proxies live as long
//! as the [`Regions`]: keep it for the whole run.

use crate::bench;
use crate::geo::{GeoNet, PairStats, MAX_NODES_PER_REGION, MAX_NODE_PORTS};
use crate::sandbox::{ClusterSpec, NodeSpec};
use crate::ClientConfig;
use anyhow::{bail, ensure, Context, Result};
use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

/// Readiness bound of a cluster laid out in regions, at least: nodes outside home register
/// across the delayed NATS link.
pub const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// The client's ICE check pace, as the runner's participants have it.
pub const ICE_CHECK_INTERVAL: Duration = Duration::from_millis(50);

/// The regions of a run: the [`GeoNet`] (its gateways and NATS proxies run while this
/// lives) and where each node sits.
#[derive(Debug)]
pub struct Regions {
    geo: GeoNet,
    /// `(node id, region)` in layout order.
    nodes: Vec<(String, String)>,
    /// The NATS server every region reaches (directly at home, else through its proxy).
    nats: SocketAddr,
}

/// Lays `regions` (`(name, nodes)`, the first being home) out on a new [`GeoNet`] with
/// `delay` one way between any two regions (random draws from `seed`), and adds their nodes
/// to `spec` (see the module documentation for ids, addresses, ports and NATS).
/// `node_flags` go to every node added, after the sandbox's own flags.
///
/// Sets `spec.nats.port` (a free port, unless the spec fixed one) and raises
/// `spec.ready_timeout` to at least [`READY_TIMEOUT`]. Refuses a spec with more than one
/// nats-server (the proxies need every server's address before the start), an empty or
/// repeated region, a region without nodes or with more than [`MAX_NODES_PER_REGION`],
/// and port ranges that are empty, larger than [`MAX_NODE_PORTS`] or past port 65535.
/// On an error `spec` is left as it was, and gateways already started are closed again.
pub async fn lay_out(
    spec: &mut ClusterSpec,
    regions: &[(&str, usize)],
    udp_base: u16,
    ports_per_node: u16,
    delay: Duration,
    seed: u64,
    node_flags: &[String],
) -> Result<Regions> {
    ensure!(
        spec.nats.servers == 1,
        "regions need a single nats-server, not {}: every region's proxy is set up before the start",
        spec.nats.servers
    );
    ensure!(
        ports_per_node > 0 && usize::from(ports_per_node) <= MAX_NODE_PORTS,
        "{ports_per_node} ports per node: want 1 to {MAX_NODE_PORTS}"
    );
    ensure!(udp_base > 0, "UDP base port 0");
    // A region without nodes holds clients only (behind the link to the nodes' region).
    for (region, count) in regions {
        ensure!(
            (0..=usize::from(MAX_NODES_PER_REGION)).contains(count),
            "region {region}: {count} nodes, want 0 to {MAX_NODES_PER_REGION}"
        );
    }
    ensure!(regions.iter().any(|(_, n)| *n > 0), "no region has a node");
    let names: Vec<&str> = regions.iter().map(|(r, _)| *r).collect();
    let mut geo = GeoNet::new(&names, delay, Duration::ZERO, seed)?;
    let port = match spec.nats.port {
        Some(p) => p,
        None => bench::free_port()?,
    };
    let nats = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let mut nodes = Vec::new();
    let mut specs = Vec::new();
    for (region, count) in regions {
        let nats_url = geo.nats_url(region, nats).await?;
        for k in 0..*count {
            let id = format!("{region}-{}", k + 1);
            let ports = node_ports(udp_base, ports_per_node, nodes.len())
                .with_context(|| format!("node {id}"))?;
            let k = u8::try_from(k)?;
            let (bind, announce) = geo
                .node_ips(region, k)
                .with_context(|| format!("no addresses for {id}"))?;
            geo.add_node(region, k, ports)
                .await
                .with_context(|| format!("gateway of {id}"))?;
            let mut node = NodeSpec::new(&id, region, ports);
            node.udp_ip = bind;
            node.public_ip = Some(announce);
            node.nats_url = Some(nats_url.clone());
            node.extra_args.extend(node_flags.iter().cloned());
            specs.push(node);
            nodes.push((id, region.to_string()));
        }
    }
    spec.nodes.extend(specs);
    spec.nats.port = Some(port);
    spec.ready_timeout = spec.ready_timeout.max(READY_TIMEOUT);
    Ok(Regions { geo, nodes, nats })
}

/// Node `i`'s inclusive UDP range: `ports_per_node` ports from `udp_base + i * ports_per_node`.
fn node_ports(udp_base: u16, ports_per_node: u16, i: usize) -> Result<(u16, u16)> {
    let lo = u64::from(udp_base) + i as u64 * u64::from(ports_per_node);
    let hi = lo + u64::from(ports_per_node) - 1;
    match (u16::try_from(lo), u16::try_from(hi)) {
        (Ok(lo), Ok(hi)) => Ok((lo, hi)),
        _ => bail!("UDP ports {lo}-{hi} go past 65535: lower the UDP base"),
    }
}

impl Regions {
    /// The region names, home first.
    pub fn regions(&self) -> &[String] {
        self.geo.regions()
    }

    /// Every node id, in layout order.
    pub fn node_ids(&self) -> Vec<String> {
        self.nodes.iter().map(|(id, _)| id.clone()).collect()
    }

    /// The nodes of `region`, in order (none for an unknown region).
    pub fn nodes_in(&self, region: &str) -> Vec<String> {
        self.nodes
            .iter()
            .filter(|(_, r)| r == region)
            .map(|(id, _)| id.clone())
            .collect()
    }

    /// The region of `node`, if it is one of the layout's.
    pub fn region_of(&self, node: &str) -> Option<String> {
        self.nodes
            .iter()
            .find(|(id, _)| id == node)
            .map(|(_, r)| r.clone())
    }

    /// A client of `region` (its `n`-th address, [`GeoNet::client_ip`]), checking ICE every
    /// [`ICE_CHECK_INTERVAL`]. `None` for an unknown region or `n` past the region's
    /// client addresses. Join with `ParticipantConfig::region` set to the same region.
    pub fn client_config(&self, region: &str, n: u8) -> Option<ClientConfig> {
        Some(ClientConfig {
            bind_ip: self.geo.client_ip(region, n)?,
            ice_check_interval: Some(ICE_CHECK_INTERVAL),
            ..ClientConfig::default()
        })
    }

    /// Like [`Regions::client_config`], with the client also placed behind its region's
    /// links ([`GeoNet::place_client`]): it announces an address where nothing listens, so
    /// every node reaches it only through the node's gateway, and a node of another region
    /// only across the pair's link (which a partition cuts).
    pub fn placed_client_config(&self, region: &str, n: u8) -> Option<ClientConfig> {
        let mut config = self.client_config(region, n)?;
        self.geo
            .place_client(&mut config, region, n)
            .then_some(config)
    }

    /// Partitions (`on`) or heals two distinct regions, both ways: their relay media and,
    /// when one is home, the other's NATS. Fails for an unknown region or `a == b`.
    pub fn partition(&self, a: &str, b: &str, on: bool) -> Result<()> {
        ensure!(
            self.geo.partition(a, b, on),
            "no link between regions {a} and {b} (known: {})",
            self.regions().join(", ")
        );
        Ok(())
    }

    /// The counters of the link between `a` and `b` (either order; `None` when there is no
    /// such pair), for a fault's evidence: `dropped_partition` rises while partitioned.
    pub fn pair_stats(&self, a: &str, b: &str) -> Option<PairStats> {
        let link = self.geo.link(a, b)?;
        let (ia, ib) = (self.geo.region_index(a)?, self.geo.region_index(b)?);
        let (a, b) = if ia < ib { (a, b) } else { (b, a) };
        Some(PairStats {
            a: a.to_owned(),
            b: b.to_owned(),
            link: link.stats(),
        })
    }

    /// Every pair's counters, in region order.
    pub fn stats(&self) -> Vec<PairStats> {
        self.geo.stats()
    }

    /// The NATS server's address (the home region dials it directly).
    pub fn nats_addr(&self) -> SocketAddr {
        self.nats
    }

    /// The GeoNet itself, for finer control (delay, loss, [`crate::impair::Link::cut`]).
    pub fn geo(&self) -> &GeoNet {
        &self.geo
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> ClusterSpec {
        ClusterSpec::new("/nonexistent")
    }

    fn ip(s: &str) -> std::net::IpAddr {
        s.parse().unwrap()
    }

    #[tokio::test]
    async fn nodes_get_their_regions_addresses_ports_and_nats() {
        let mut spec = spec();
        spec.nats.port = Some(4999);
        let flags = ["--room-empty-grace-secs=1".to_owned()];
        let base = 20_000 + 40 * (rand::random::<u16>() % 250);
        let r = lay_out(
            &mut spec,
            &[("eu", 2), ("us", 1)],
            base,
            10,
            Duration::from_millis(20),
            1,
            &flags,
        )
        .await
        .unwrap();
        assert_eq!(spec.nats.port, Some(4999));
        assert_eq!(
            r.nats_addr(),
            "127.0.0.1:4999".parse::<SocketAddr>().unwrap()
        );
        assert!(spec.ready_timeout >= READY_TIMEOUT);
        let ids: Vec<&str> = spec.nodes.iter().map(|n| n.id.as_str()).collect();
        assert_eq!(ids, ["eu-1", "eu-2", "us-1"]);
        assert_eq!(r.node_ids(), ids);
        let n = |i: usize| &spec.nodes[i];
        assert_eq!(n(1).region, "eu");
        assert_eq!(n(1).udp_ip, ip("127.0.10.3"));
        assert_eq!(n(1).public_ip, Some(ip("127.0.10.4")));
        assert_eq!(n(1).udp_ports, (base + 10, base + 19));
        assert_eq!(n(2).udp_ip, ip("127.0.11.1"));
        assert_eq!(n(2).udp_ports, (base + 20, base + 29));
        assert_eq!(n(0).nats_url.as_deref(), Some("nats://127.0.0.1:4999"));
        let us_nats = n(2).nats_url.clone().unwrap();
        assert!(us_nats.starts_with("nats://127.0.0.1:"), "{us_nats}");
        assert_ne!(
            us_nats, "nats://127.0.0.1:4999",
            "us goes through its proxy"
        );
        assert!(spec.nodes.iter().all(|n| n.extra_args == flags));
        assert_eq!(r.nodes_in("eu"), ["eu-1", "eu-2"]);
        assert!(r.nodes_in("ap").is_empty());
        assert_eq!(r.region_of("us-1").as_deref(), Some("us"));
        assert_eq!(r.region_of("n1"), None);
        let c = r.client_config("us", 3).unwrap();
        assert_eq!(c.bind_ip, ip("127.0.11.103"));
        assert_eq!(c.announce_ip, None);
        assert_eq!(c.ice_check_interval, Some(ICE_CHECK_INTERVAL));
        assert!(r.client_config("ap", 0).is_none());
        let placed = r.placed_client_config("us", 3).unwrap();
        assert_eq!(placed.announce_ip, Some(ip("127.0.11.99")));
        r.partition("us", "eu", true).unwrap();
        assert!(r.geo().link("eu", "us").unwrap().impairment().partitioned);
        r.partition("eu", "us", false).unwrap();
        assert!(!r.geo().link("eu", "us").unwrap().impairment().partitioned);
        assert!(r.partition("eu", "eu", true).is_err());
        assert!(r.partition("eu", "ap", true).is_err());
        let stats = r.pair_stats("us", "eu").unwrap();
        assert_eq!((stats.a.as_str(), stats.b.as_str()), ("eu", "us"));
        assert!(r.pair_stats("eu", "ap").is_none());
        assert_eq!(r.stats().len(), 1);
    }

    #[tokio::test]
    async fn bad_layouts_are_refused() {
        let d = Duration::ZERO;
        let three = || spec().nats_servers(3);
        assert!(lay_out(&mut three(), &[("eu", 1)], 20_000, 10, d, 0, &[])
            .await
            .is_err());
        for (regions, base, ports) in [
            (&[("eu", 0)][..], 20_000, 10),
            (&[("eu", 50)][..], 20_000, 10),
            (&[("eu", 1), ("eu", 1)][..], 20_000, 10),
            (&[][..], 20_000, 10),
            (&[("eu", 1)][..], 20_000, 0),
            (&[("eu", 1)][..], 0, 10),
            (&[("eu", 1), ("us", 1)][..], 65_530, 5),
        ] {
            let mut s = spec();
            assert!(
                lay_out(&mut s, regions, base, ports, d, 0, &[])
                    .await
                    .is_err(),
                "{regions:?} {base} {ports}"
            );
            assert!(
                s.nodes.is_empty() && s.nats.port.is_none(),
                "spec untouched"
            );
        }
        assert_eq!(node_ports(65_000, 10, 3).unwrap(), (65_030, 65_039));
        assert!(node_ports(65_530, 5, 1).is_err());
    }
}
