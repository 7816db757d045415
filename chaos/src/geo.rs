//! Geography on one machine: regions on loopback subnets with impaired links between them,
//! so a local cluster sees inter-region round trips and partitions on its relay paths and
//! NATS links while each region's clients reach their own node at loopback speed.
//!
//! The address plan (all of 127.0.0.0/8 is loopback on Linux, no setup needed):
//! - region `i` (its position in the list) owns 127.0.(10+i).0/24;
//! - its node `k` binds media on .(2k+1) (node `udp_ip`) and announces .(2k+2) in ICE
//!   (node `public_ip`, a 1:1 NAT);
//! - its clients bind on .(100+n) (`ClientConfig::bind_ip`);
//! - .99 is where nothing listens: clients placed with [`GeoNet::place_client`] announce it
//!   in their ICE candidates (`ClientConfig::announce_ip`).
//!
//! A gateway ([`UdpProxy::start_routed`]) listens on the announce address for each port of
//! the node's range and relays to the bind address. It picks the link by the sender's
//! source address, because that is what tells a node's own region from another: a source in
//! the node's region passes untouched, a source in region `j` crosses the link of the pair
//! (node's region, `j`), anything else (127.0.0.1) passes untouched. A relay link between
//! two nodes therefore crosses exactly one gateway, whichever node dials, and pays the
//! one-way delay once each way.
//!
//! NATS lives in the home region (the first one): its processes dial it directly, and every
//! other region gets a [`TcpProxy`] through the link (home, region). So a partition between
//! a region and the home region also stalls that region's NATS (the connections are held,
//! not closed; [`Link::cut`] closes them).
//!
//! One [`Link`] per unordered pair, shared by every gateway and NATS proxy of the pair:
//! `partition("eu", "us", true)` cuts both directions between eu and us and leaves ap alone.
//! In a pair's [`LinkStats`], `forward` is toward the node (or NATS) whose proxy it crossed.
//!
//! This relies on the node announcing `public_ip`, never `udp_ip`, in its ICE candidates: a
//! peer that learns the bind address sends there directly and no gateway sees it. The same
//! holds the other way: a node's ICE checks a client's host candidate (its bind address)
//! directly, a path that crosses no gateway, and may pick it. A client that only sets
//! `bind_ip` reaches its own region's node at loopback speed that way, which is what such a
//! client wants. A client that must sit behind a link — a region of impaired clients, with
//! or without a node of its own, joining another region's node — is placed with
//! [`GeoNet::place_client`]: it announces its region's .99, where nothing listens, so the
//! node's only path to it is the one the client's own checks open through the node's
//! gateway (the node learns the gateway's mapping socket as a peer-reflexive candidate), and
//! its media crosses the pair's link both ways. Then [`GeoNet::update_link`] changes what
//! that link does, at any time. Loss is best turned on once the connections are up: a
//! webrtc-rs 0.21.1 DTLS handshake whose flight is lost may never be retried (a side stops
//! its retransmission timer on any record that does not complete the flight it waits for),
//! so loss from the start fails some connections (about one in ten at 5 %).
//!
//! ```no_run
//! # async fn demo() -> anyhow::Result<()> {
//! use chaos::geo::GeoNet;
//! use chaos::ClientConfig;
//! use std::time::Duration;
//! // "eu-lossy" holds clients only; its link to "eu" starts perfect.
//! let mut geo = GeoNet::new(&["eu", "eu-lossy"], Duration::ZERO, Duration::ZERO, 7)?;
//! geo.add_node("eu", 0, (20_000, 20_039)).await?; // the eu node: udp_ip/public_ip from node_ips
//! let mut config = ClientConfig::default();
//! assert!(geo.place_client(&mut config, "eu-lossy", 0)); // then join the eu node with it
//! // At fault time: 40 ms each way and 5 % loss between the node and those clients.
//! geo.update_link("eu", "eu-lossy", |i| {
//!     i.delay = Duration::from_millis(40);
//!     i.loss = 0.05;
//! });
//! # Ok(())
//! # }
//! ```

use crate::impair::{Impairment, Link, LinkStats, TcpProxy, UdpProxy};
use crate::ClientConfig;
use serde::Serialize;
use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tracing::debug;

/// Regions a [`GeoNet`] holds: the third octet runs from 10 to 255.
pub const MAX_REGIONS: usize = 246;
/// Nodes per region: node `k` takes hosts 2k+1 and 2k+2, below the clients' hosts.
pub const MAX_NODES_PER_REGION: u8 = 49;
/// Clients per region: client `n` is host 100+n, up to .254.
pub const MAX_CLIENTS_PER_REGION: u8 = 155;
/// Ports one node's gateway may relay: each is a proxy with its own socket and task.
pub const MAX_NODE_PORTS: usize = 4096;

/// Third octet of the first region's subnet.
const FIRST_SUBNET: u8 = 10;
/// Host of a region's first client.
const FIRST_CLIENT_HOST: u8 = 100;
/// The host a placed client announces: above the last node's, below the first client's, so
/// nothing ever listens there.
const CLIENT_ANNOUNCE_HOST: u8 = 99;

/// Regions on loopback, an impaired link per pair, gateways for nodes' media and proxies
/// for NATS. Every proxy stops when this is dropped.
pub struct GeoNet {
    regions: Vec<String>,
    /// One per unordered pair, at [`pair_index`].
    links: Vec<Link>,
    nodes: Vec<Gateway>,
    /// NATS proxies by (region, NATS address), made on first ask.
    nats: HashMap<(usize, SocketAddr), TcpProxy>,
    /// Serialises read-modify-write changes of a link, so `set_delay` cannot undo a
    /// concurrent `partition`.
    edits: Mutex<()>,
}

/// One node's media gateway: a proxy per port.
struct Gateway {
    region: usize,
    k: u8,
    _proxies: Vec<UdpProxy>,
}

/// A pair's counters, for reports.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PairStats {
    pub a: String,
    pub b: String,
    pub link: LinkStats,
}

impl GeoNet {
    /// Regions in order (the first is NATS's home), each pair linked with `one_way_delay`
    /// and `jitter` each way. The pairs' random draws follow from `seed`. Refuses
    /// (`InvalidInput`) an empty list, an empty or repeated name, or more than
    /// [`MAX_REGIONS`].
    pub fn new(
        regions: &[&str],
        one_way_delay: Duration,
        jitter: Duration,
        seed: u64,
    ) -> io::Result<Self> {
        if regions.is_empty() || regions.len() > MAX_REGIONS {
            return Err(invalid(format!(
                "geo needs 1 to {MAX_REGIONS} regions, got {}",
                regions.len()
            )));
        }
        for (i, name) in regions.iter().enumerate() {
            if name.is_empty() {
                return Err(invalid("empty region name".into()));
            }
            if regions[..i].contains(name) {
                return Err(invalid(format!("region {name} named twice")));
            }
        }
        let impairment = Impairment {
            delay: one_way_delay,
            jitter,
            ..Impairment::default()
        };
        let pairs = regions.len() * (regions.len() - 1) / 2;
        let links = (0..pairs as u64)
            .map(|p| Link::with_seed(impairment, seed.wrapping_add(p << 32)))
            .collect();
        Ok(Self {
            regions: regions.iter().map(|r| r.to_string()).collect(),
            links,
            nodes: Vec::new(),
            nats: HashMap::new(),
            edits: Mutex::new(()),
        })
    }

    /// The regions, home first.
    pub fn regions(&self) -> &[String] {
        &self.regions
    }

    pub fn region_index(&self, region: &str) -> Option<usize> {
        self.regions.iter().position(|r| r == region)
    }

    /// Where client `n` of `region` binds: 127.0.(10+i).(100+n). `None` for an unknown
    /// region or `n` of [`MAX_CLIENTS_PER_REGION`] or more.
    pub fn client_ip(&self, region: &str, n: u8) -> Option<IpAddr> {
        let i = self.region_index(region)?;
        (n < MAX_CLIENTS_PER_REGION).then(|| host(i, FIRST_CLIENT_HOST + n))
    }

    /// The address clients of `region` placed with [`GeoNet::place_client`] announce in
    /// their candidates: 127.0.(10+i).99, where nothing listens. `None` for an unknown region.
    pub fn client_announce_ip(&self, region: &str) -> Option<IpAddr> {
        Some(host(self.region_index(region)?, CLIENT_ANNOUNCE_HOST))
    }

    /// Puts client `n` of `region` behind the region's links: its peer connections bind on
    /// [`GeoNet::client_ip`] and announce [`GeoNet::client_announce_ip`], so a node of
    /// another region reaches it only through that node's gateway, across the link of the
    /// pair, both ways (a node of `region` itself through its gateway, unimpaired). The
    /// rest of `config` is kept. False, leaving `config` alone, for an unknown region or
    /// `n` of [`MAX_CLIENTS_PER_REGION`] or more.
    pub fn place_client(&self, config: &mut ClientConfig, region: &str, n: u8) -> bool {
        let (Some(bind), Some(announce)) =
            (self.client_ip(region, n), self.client_announce_ip(region))
        else {
            return false;
        };
        config.bind_ip = bind;
        config.announce_ip = Some(announce);
        true
    }

    /// Node `k` of `region`: the address it binds media on (`udp_ip`) and the one it
    /// announces (`public_ip`), where its gateway listens. `None` for an unknown region or
    /// `k` of [`MAX_NODES_PER_REGION`] or more.
    pub fn node_ips(&self, region: &str, k: u8) -> Option<(IpAddr, IpAddr)> {
        let i = self.region_index(region)?;
        (k < MAX_NODES_PER_REGION).then(|| (host(i, 2 * k + 1), host(i, 2 * k + 2)))
    }

    /// Starts node `k`'s gateway for the inclusive port range `ports`: announce:p → bind:p
    /// for each port. All or nothing: on an error the ports already started are closed.
    pub async fn add_node(&mut self, region: &str, k: u8, ports: (u16, u16)) -> io::Result<()> {
        let i = self
            .region_index(region)
            .ok_or_else(|| invalid(format!("unknown region {region}")))?;
        let (bind, announce) = self.node_ips(region, k).ok_or_else(|| {
            let last = MAX_NODES_PER_REGION - 1;
            invalid(format!("node {region}:{k}: a region has nodes 0 to {last}"))
        })?;
        let (first, last) = ports;
        let count = usize::from(last).saturating_sub(usize::from(first)) + 1;
        if first == 0 || first > last || count > MAX_NODE_PORTS {
            return Err(invalid(format!(
                "port range {first}-{last}: want 1 to {MAX_NODE_PORTS} ports, none of them 0"
            )));
        }
        if self.nodes.iter().any(|n| (n.region, n.k) == (i, k)) {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!("node {region}:{k} already has a gateway"),
            ));
        }
        let peers: Arc<[Option<Link>]> = (0..self.regions.len())
            .map(|j| self.pair(i, j).cloned())
            .collect();
        let mut proxies = Vec::with_capacity(count);
        for port in first..=last {
            let peers = peers.clone();
            let route = Arc::new(move |ip: IpAddr| {
                region_of(ip).and_then(|j| peers.get(j).cloned().flatten())
            });
            let proxy = UdpProxy::start_routed((announce, port).into(), (bind, port).into(), route)
                .await
                .map_err(|e| io::Error::new(e.kind(), format!("gateway {announce}:{port}: {e}")))?;
            proxies.push(proxy);
        }
        debug!(region, k, %bind, %announce, first, last, "geo gateway started");
        self.nodes.push(Gateway {
            region: i,
            k,
            _proxies: proxies,
        });
        Ok(())
    }

    /// The NATS URL `region`'s processes use to reach the server at `nats`: the server
    /// itself for the home region, else (made once, then reused) a TCP proxy on 127.0.0.1
    /// through the link between the home region and `region`.
    pub async fn nats_url(&mut self, region: &str, nats: SocketAddr) -> io::Result<String> {
        let i = self
            .region_index(region)
            .ok_or_else(|| invalid(format!("unknown region {region}")))?;
        if i == 0 {
            return Ok(format!("nats://{nats}"));
        }
        if let Some(proxy) = self.nats.get(&(i, nats)) {
            return Ok(format!("nats://{}", proxy.local_addr()));
        }
        let link = self
            .pair(0, i)
            .cloned()
            .ok_or_else(|| invalid(format!("no link to {region}")))?;
        let listen = SocketAddr::from((Ipv4Addr::LOCALHOST, 0));
        let proxy = TcpProxy::start(listen, nats, link).await?;
        let url = format!("nats://{}", proxy.local_addr());
        debug!(region, %nats, url, "geo nats proxy started");
        self.nats.insert((i, nats), proxy);
        Ok(url)
    }

    /// The link between two distinct regions, for its counters or finer control (loss, a
    /// rate cap, [`Link::cut`] of the NATS connections).
    pub fn link(&self, a: &str, b: &str) -> Option<&Link> {
        self.pair(self.region_index(a)?, self.region_index(b)?)
    }

    /// Partitions (or heals) two regions, both ways: their media and, when one is the home
    /// region, the other's NATS. False when the pair does not exist.
    pub fn partition(&self, a: &str, b: &str, on: bool) -> bool {
        let Some(link) = self.link(a, b) else {
            return false;
        };
        let _edit = self.edits.lock().unwrap_or_else(|e| e.into_inner());
        link.partition(on);
        true
    }

    /// Sets the pair's one-way delay, keeping the rest of its impairment; packets already
    /// queued keep their release times. False when the pair does not exist.
    pub fn set_delay(&self, a: &str, b: &str, one_way: Duration) -> bool {
        let Some(link) = self.link(a, b) else {
            return false;
        };
        let _edit = self.edits.lock().unwrap_or_else(|e| e.into_inner());
        link.set(Impairment {
            delay: one_way,
            ..link.impairment()
        });
        true
    }

    /// Changes the pair's impairment in place (`f` gets the one in force), serialised with
    /// the other edits so none undoes a concurrent one; packets already queued keep their
    /// release times. False when the pair does not exist.
    pub fn update_link(&self, a: &str, b: &str, f: impl FnOnce(&mut Impairment)) -> bool {
        let Some(link) = self.link(a, b) else {
            return false;
        };
        let _edit = self.edits.lock().unwrap_or_else(|e| e.into_inner());
        let mut impairment = link.impairment();
        f(&mut impairment);
        link.set(impairment);
        true
    }

    /// Every pair's counters, in region order.
    pub fn stats(&self) -> Vec<PairStats> {
        let n = self.regions.len();
        let mut out = Vec::with_capacity(self.links.len());
        for a in 0..n {
            for b in a + 1..n {
                if let Some(link) = self.pair(a, b) {
                    out.push(PairStats {
                        a: self.regions[a].clone(),
                        b: self.regions[b].clone(),
                        link: link.stats(),
                    });
                }
            }
        }
        out
    }

    fn pair(&self, a: usize, b: usize) -> Option<&Link> {
        let n = self.regions.len();
        if a >= n || b >= n {
            return None;
        }
        self.links.get(pair_index(a, b)?)
    }
}

impl std::fmt::Debug for GeoNet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GeoNet")
            .field("regions", &self.regions)
            .field("nodes", &self.nodes.len())
            .field("nats_proxies", &self.nats.len())
            .finish_non_exhaustive()
    }
}

/// Position of the unordered pair {a, b} in a triangle of pairs; `None` for a == b.
fn pair_index(a: usize, b: usize) -> Option<usize> {
    let (lo, hi) = (a.min(b), a.max(b));
    (lo != hi).then(|| hi * (hi - 1) / 2 + lo)
}

/// Host `h` of region `i`'s subnet; `i` is below [`MAX_REGIONS`].
fn host(i: usize, h: u8) -> IpAddr {
    let subnet = u8::try_from(i)
        .ok()
        .and_then(|i| i.checked_add(FIRST_SUBNET))
        .unwrap_or(u8::MAX);
    IpAddr::V4(Ipv4Addr::new(127, 0, subnet, h))
}

/// The region whose subnet holds `ip`, if any (the region may not exist).
fn region_of(ip: IpAddr) -> Option<usize> {
    let v4 = match ip {
        IpAddr::V4(v4) => v4,
        IpAddr::V6(v6) => v6.to_ipv4_mapped()?,
    };
    match v4.octets() {
        [127, 0, subnet, _] if subnet >= FIRST_SUBNET => Some(usize::from(subnet - FIRST_SUBNET)),
        _ => None,
    }
}

fn invalid(message: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, message)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn geo() -> GeoNet {
        GeoNet::new(
            &["eu", "us", "ap"],
            Duration::from_millis(40),
            Duration::ZERO,
            7,
        )
        .unwrap()
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn addresses_follow_the_plan() {
        let g = geo();
        assert_eq!(g.region_index("ap"), Some(2));
        assert_eq!(g.region_index("mars"), None);
        assert_eq!(g.client_ip("us", 0), Some(ip("127.0.11.100")));
        assert_eq!(g.client_ip("ap", 154), Some(ip("127.0.12.254")));
        assert_eq!(g.client_ip("ap", 155), None);
        assert_eq!(g.client_ip("mars", 0), None);
        assert_eq!(
            g.node_ips("eu", 0),
            Some((ip("127.0.10.1"), ip("127.0.10.2")))
        );
        assert_eq!(
            g.node_ips("us", 1),
            Some((ip("127.0.11.3"), ip("127.0.11.4")))
        );
        assert_eq!(
            g.node_ips("eu", 48),
            Some((ip("127.0.10.97"), ip("127.0.10.98")))
        );
        assert_eq!(g.node_ips("eu", 49), None);
        assert_eq!(g.node_ips("eu", u8::MAX), None);
    }

    #[test]
    fn sources_map_to_their_region() {
        assert_eq!(region_of(ip("127.0.10.100")), Some(0));
        assert_eq!(region_of(ip("127.0.12.1")), Some(2));
        assert_eq!(region_of(ip("127.0.255.1")), Some(245));
        assert_eq!(region_of(ip("::ffff:127.0.11.3")), Some(1));
        for other in ["127.0.0.1", "127.0.9.1", "127.1.10.1", "10.0.10.1", "::1"] {
            assert_eq!(region_of(ip(other)), None, "{other}");
        }
    }

    #[test]
    fn each_unordered_pair_has_one_link() {
        let g = geo();
        g.link("eu", "us").unwrap().partition(true);
        assert!(g.link("us", "eu").unwrap().impairment().partitioned);
        assert!(!g.link("eu", "ap").unwrap().impairment().partitioned);
        assert!(g.link("eu", "eu").is_none());
        assert!(g.link("eu", "mars").is_none());
        let mut indexes: Vec<usize> = (0..5)
            .flat_map(|b| (0..b).map(move |a| pair_index(a, b).unwrap()))
            .collect();
        indexes.sort_unstable();
        assert_eq!(indexes, (0..10).collect::<Vec<_>>());
        assert_eq!(pair_index(3, 3), None);
    }

    #[test]
    fn partition_and_delay_touch_one_pair() {
        let g = geo();
        assert!(g.partition("eu", "us", true));
        assert!(g.set_delay("us", "eu", Duration::from_millis(90)));
        let eu_us = g.link("eu", "us").unwrap().impairment();
        assert!(eu_us.partitioned);
        assert_eq!(eu_us.delay, Duration::from_millis(90));
        let ap_us = g.link("ap", "us").unwrap().impairment();
        assert!(!ap_us.partitioned);
        assert_eq!(ap_us.delay, Duration::from_millis(40));
        assert!(!g.partition("eu", "eu", true));
        assert!(!g.set_delay("eu", "mars", Duration::ZERO));
        let names: Vec<(String, String)> = g.stats().into_iter().map(|p| (p.a, p.b)).collect();
        let want = [("eu", "us"), ("eu", "ap"), ("us", "ap")];
        assert_eq!(names, want.map(|(a, b)| (a.to_string(), b.to_string())));
    }

    #[test]
    fn placed_clients_bind_in_their_region_and_announce_where_nothing_listens() {
        let g = geo();
        let mut config = ClientConfig {
            request_timeout: Duration::from_secs(3),
            ..ClientConfig::default()
        };
        assert!(g.place_client(&mut config, "ap", 7));
        assert_eq!(config.bind_ip, ip("127.0.12.107"));
        assert_eq!(config.announce_ip, Some(ip("127.0.12.99")));
        assert_eq!(config.request_timeout, Duration::from_secs(3));
        assert_eq!(g.client_announce_ip("eu"), Some(ip("127.0.10.99")));
        // Past the last node's hosts, before the first client's.
        let (_, last_node) = g.node_ips("eu", MAX_NODES_PER_REGION - 1).unwrap();
        assert!(last_node < g.client_announce_ip("eu").unwrap());
        assert!(g.client_announce_ip("eu").unwrap() < g.client_ip("eu", 0).unwrap());
        let before = config.clone();
        assert!(!g.place_client(&mut config, "mars", 0));
        assert!(!g.place_client(&mut config, "eu", MAX_CLIENTS_PER_REGION));
        assert_eq!(config.bind_ip, before.bind_ip);
        assert_eq!(config.announce_ip, before.announce_ip);
        assert_eq!(g.client_announce_ip("mars"), None);
    }

    #[test]
    fn update_link_edits_one_pair_in_place() {
        let g = geo();
        assert!(g.partition("eu", "ap", true));
        assert!(g.update_link("ap", "eu", |i| {
            i.loss = 0.05;
            i.jitter = Duration::from_millis(5);
        }));
        let eu_ap = g.link("eu", "ap").unwrap().impairment();
        assert_eq!(
            eu_ap,
            Impairment {
                delay: Duration::from_millis(40),
                jitter: Duration::from_millis(5),
                loss: 0.05,
                rate_bps: None,
                partitioned: true,
            }
        );
        assert_eq!(g.link("eu", "us").unwrap().impairment().loss, 0.0);
        assert!(!g.update_link("eu", "eu", |_| {}));
        assert!(!g.update_link("eu", "mars", |_| {}));
    }

    #[test]
    fn bad_region_lists_are_refused() {
        let d = Duration::ZERO;
        assert!(GeoNet::new(&[], d, d, 0).is_err());
        assert!(GeoNet::new(&["eu", ""], d, d, 0).is_err());
        assert!(GeoNet::new(&["eu", "us", "eu"], d, d, 0).is_err());
        let many: Vec<String> = (0..=MAX_REGIONS).map(|i| format!("r{i}")).collect();
        let names: Vec<&str> = many.iter().map(String::as_str).collect();
        assert!(GeoNet::new(&names, d, d, 0).is_err());
        let last = GeoNet::new(&names[..MAX_REGIONS], d, d, 0).unwrap();
        assert_eq!(last.client_ip("r245", 0), Some(ip("127.0.255.100")));
        assert_eq!(last.stats().len(), MAX_REGIONS * (MAX_REGIONS - 1) / 2);
    }

    #[tokio::test]
    async fn bad_nodes_are_refused_before_binding() {
        let mut g = geo();
        for (region, k, ports) in [
            ("mars", 0, (50_000, 50_001)),
            ("eu", 49, (50_000, 50_001)),
            ("eu", 0, (0, 10)),
            ("eu", 0, (50_001, 50_000)),
            ("eu", 0, (1, u16::MAX)),
        ] {
            let err = g.add_node(region, k, ports).await.unwrap_err();
            assert_eq!(
                err.kind(),
                io::ErrorKind::InvalidInput,
                "{region}:{k} {ports:?}"
            );
        }
        let nats: SocketAddr = "127.0.0.1:4222".parse().unwrap();
        assert_eq!(
            g.nats_url("eu", nats).await.unwrap(),
            "nats://127.0.0.1:4222"
        );
        assert!(g.nats_url("mars", nats).await.is_err());
    }
}
