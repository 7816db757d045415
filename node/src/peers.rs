//! The other nodes of the cluster as this node hears of them (their heartbeats, and the
//! coordinators' word that one died): where their clients connect, their region, whether
//! they take clients. It answers two questions: which URLs a client should try if this node
//! goes away (`joined.fallback_urls`), and where a client moves when this node drains.
//! A plain struct, time passed in.

use protocol::cluster::NodeHeartbeat;
use protocol::NodeId;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// How many URLs `joined.fallback_urls` lists.
pub const FALLBACK_URLS: usize = 4;

#[derive(Debug, Clone)]
struct PeerNode {
    region: String,
    ws_url: String,
    draining: bool,
    seen: Instant,
    /// A coordinator said it died; cleared by a heartbeat sent after that.
    dead: bool,
}

#[derive(Debug)]
pub struct PeerNodes {
    me: NodeId,
    region: String,
    /// Silent this long, a node is not offered to clients.
    timeout: Duration,
    nodes: BTreeMap<NodeId, PeerNode>,
    /// When this node last heard its own heartbeat back from NATS: proof that it is
    /// connected to the cluster, whatever the state of its TCP connection says.
    self_seen: Option<Instant>,
    /// Since when it has heard itself without a gap: silence of another node counts from
    /// here (as a coordinator's does from when it started listening).
    listening_since: Option<Instant>,
}

/// A gap this long in this node's own heartbeats means it was not listening.
const LISTENING_GAP: Duration = Duration::from_secs(2);

impl PeerNodes {
    pub fn new(me: NodeId, region: String, timeout: Duration) -> Self {
        PeerNodes {
            me,
            region,
            timeout,
            nodes: BTreeMap::new(),
            self_seen: None,
            listening_since: None,
        }
    }

    pub fn heartbeat(&mut self, hb: &NodeHeartbeat, now: Instant) {
        if hb.node == self.me {
            let gap = self
                .self_seen
                .is_none_or(|t| now.saturating_duration_since(t) > LISTENING_GAP);
            if gap {
                self.listening_since = Some(now);
            }
            self.self_seen = Some(now);
            return;
        }
        self.nodes.insert(
            hb.node.clone(),
            PeerNode {
                region: hb.region.clone(),
                ws_url: hb.ws_url.clone(),
                draining: hb.draining,
                seen: now,
                dead: false,
            },
        );
    }

    /// How long this node has heard its own heartbeats without a gap (`None`: it does not
    /// hear them now).
    pub fn listening_for(&self, now: Instant) -> Option<Duration> {
        let seen = self.self_seen?;
        if now.saturating_duration_since(seen) > LISTENING_GAP {
            return None;
        }
        self.listening_since
            .map(|since| now.saturating_duration_since(since))
    }

    /// How long this node has not heard its own heartbeat back (`None` before the first):
    /// past the coordinators' node timeout, they have declared it dead.
    pub fn cut_off_for(&self, now: Instant) -> Option<Duration> {
        self.self_seen.map(|t| now.saturating_duration_since(t))
    }

    /// Whether, as far as this node can tell, `node` is cut off from the cluster: this node
    /// has been listening for the timeout and has not heard `node` for as long. What a
    /// coordinator concludes from the same silence (it declares the node dead).
    pub fn hears_nothing_from(&self, node: &NodeId, now: Instant) -> bool {
        let (Some(since), Some(seen_self)) = (self.listening_since, self.self_seen) else {
            return false;
        };
        if now.saturating_duration_since(seen_self) > LISTENING_GAP {
            return false;
        }
        let heard = self.nodes.get(node).map(|n| n.seen);
        let silent_from = heard.map_or(since, |h| h.max(since));
        now.saturating_duration_since(silent_from) >= self.timeout
    }

    /// A coordinator found `node` dead.
    pub fn dead(&mut self, node: &NodeId) {
        if let Some(n) = self.nodes.get_mut(node) {
            n.dead = true;
        }
    }

    pub fn is_dead(&self, node: &NodeId) -> bool {
        self.nodes.get(node).is_some_and(|n| n.dead)
    }

    /// Nodes heard from within the timeout, alive and taking clients. "Within" counts up to
    /// the latest heartbeat heard at all, not up to `now`: a node cut off from NATS hears
    /// nobody, and still knows where its clients can go.
    fn usable(&self, now: Instant) -> impl Iterator<Item = (&NodeId, &PeerNode)> {
        let latest = self
            .nodes
            .values()
            .map(|n| n.seen)
            .chain(self.self_seen)
            .max()
            .unwrap_or(now)
            .min(now);
        self.nodes.iter().filter(move |(_, n)| {
            !n.dead && !n.draining && latest.saturating_duration_since(n.seen) < self.timeout
        })
    }

    /// Live, non-draining nodes' URLs, this node's region first, at most `limit`.
    pub fn fallback_urls(&self, now: Instant, limit: usize) -> Vec<String> {
        let (mut near, far): (Vec<_>, Vec<_>) = self
            .usable(now)
            .map(|(_, n)| n)
            .partition(|n| n.region == self.region);
        near.extend(far);
        near.into_iter()
            .take(limit)
            .map(|n| n.ws_url.clone())
            .collect()
    }

    /// The URL of `node`, if it is usable.
    pub fn url_of(&self, node: &NodeId, now: Instant) -> Option<String> {
        self.usable(now)
            .find(|(id, _)| *id == node)
            .map(|(_, n)| n.ws_url.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use protocol::cluster::VERSION;

    fn hb(node: &str, region: &str, draining: bool) -> NodeHeartbeat {
        NodeHeartbeat {
            v: VERSION,
            node: NodeId::new(node).unwrap(),
            region: region.into(),
            ws_url: format!("ws://{node}/ws"),
            draining,
            load: Default::default(),
            sent_ms: 0,
        }
    }

    #[test]
    fn fallbacks_are_live_nodes_nearest_first() {
        let t0 = Instant::now();
        let mut p = PeerNodes::new(
            NodeId::new("me").unwrap(),
            "eu".into(),
            Duration::from_secs(3),
        );
        p.heartbeat(&hb("me", "eu", false), t0);
        p.heartbeat(&hb("us-1", "us", false), t0);
        p.heartbeat(&hb("eu-2", "eu", false), t0);
        p.heartbeat(&hb("eu-3", "eu", true), t0);
        p.heartbeat(&hb("eu-4", "eu", false), t0);
        p.dead(&NodeId::new("eu-4").unwrap());
        assert_eq!(
            p.fallback_urls(t0, 4),
            vec!["ws://eu-2/ws".to_string(), "ws://us-1/ws".to_string()]
        );
        assert_eq!(p.fallback_urls(t0, 1), vec!["ws://eu-2/ws".to_string()]);
        // Silent nodes are not offered once others are heard later; a heartbeat brings a
        // dead one back.
        let later = t0 + Duration::from_secs(3);
        assert_eq!(
            p.fallback_urls(later, 4).len(),
            2,
            "nobody heard since: still usable"
        );
        p.heartbeat(&hb("eu-4", "eu", false), later);
        assert_eq!(p.fallback_urls(later, 4), vec!["ws://eu-4/ws".to_string()]);
        assert_eq!(
            p.url_of(&NodeId::new("eu-4").unwrap(), later).as_deref(),
            Some("ws://eu-4/ws")
        );
        assert!(p.url_of(&NodeId::new("me").unwrap(), later).is_none());
        // Its own heartbeat, heard back, is this node's proof of being connected.
        assert_eq!(p.cut_off_for(later), Some(Duration::from_secs(3)));
        p.heartbeat(&hb("me", "eu", false), later);
        assert_eq!(p.cut_off_for(later), Some(Duration::ZERO));
    }

    #[test]
    fn another_node_is_cut_off_only_after_a_whole_timeout_of_listening() {
        let t0 = Instant::now();
        let s = |secs: f64| t0 + Duration::from_secs_f64(secs);
        let me = || hb("me", "eu", false);
        let other = NodeId::new("eu-2").unwrap();
        let mut p = PeerNodes::new(
            NodeId::new("me").unwrap(),
            "eu".into(),
            Duration::from_secs(3),
        );
        // Not listening yet: nothing can be said.
        assert!(!p.hears_nothing_from(&other, s(10.0)));
        p.heartbeat(&me(), s(0.0));
        p.heartbeat(&hb("eu-2", "eu", false), s(0.5));
        for i in 1..=5 {
            p.heartbeat(&me(), s(f64::from(i)));
        }
        assert!(!p.hears_nothing_from(&other, s(3.4)));
        assert!(p.hears_nothing_from(&other, s(3.5)));
        // This node was away itself (a NATS restart): silence counts from its return.
        p.heartbeat(&me(), s(9.0));
        assert!(!p.hears_nothing_from(&other, s(9.5)));
        p.heartbeat(&me(), s(10.0));
        p.heartbeat(&me(), s(11.0));
        p.heartbeat(&me(), s(12.0));
        assert!(p.hears_nothing_from(&other, s(12.0)));
        // Not hearing itself now, it can tell nothing.
        assert!(!p.hears_nothing_from(&other, s(14.5)));
    }
}
