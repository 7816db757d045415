//! Which connection a datagram on the node's one media port belongs to.
//!
//! A STUN binding request names its connection: the first half of its USERNAME is the local
//! ICE ufrag, which the engine makes itself and which carries the worker and connection
//! ([`Ufrag`]). Every other datagram (DTLS, SRTP, SRTCP, STUN responses and indications) is
//! routed by the address it came from (str0m's `Rtc::accepts` does the same). An address is
//! learned only from what a connection itself sends ([`AddrTable::learn`]): its answer to a
//! binding request that passed the ICE agent's MESSAGE-INTEGRITY check, or its own checks to
//! the candidates the client signalled. So a forged binding request reaches the connection
//! (which drops it) but teaches the engine nothing, and a datagram from an address no
//! connection talks to is dropped.
//!
//! Everything here is pure and never panics on any input.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// Which worker owns a connection, and the connection's id there.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Route {
    pub worker: u8,
    pub conn: u64,
}

/// The connection ids fit in 48 bits so a ufrag stays short.
pub const MAX_CONN_ID: u64 = (1 << 48) - 1;

/// A local ICE ufrag: 2 hex digits of worker, 12 of connection id, then random characters
/// (ICE needs at least 24 bits of randomness; we add 48).
pub struct Ufrag;

impl Ufrag {
    pub fn make(route: Route, random: u64) -> String {
        const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
        let mut s = format!("{:02x}{:012x}", route.worker, route.conn & MAX_CONN_ID);
        let mut r = random;
        for _ in 0..8 {
            s.push(char::from(ALPHABET[(r % ALPHABET.len() as u64) as usize]));
            r /= ALPHABET.len() as u64;
        }
        s
    }

    pub fn parse(ufrag: &[u8]) -> Option<Route> {
        if ufrag.len() < 14 {
            return None;
        }
        let hex = std::str::from_utf8(&ufrag[..14]).ok()?;
        let worker = u8::from_str_radix(&hex[..2], 16).ok()?;
        let conn = u64::from_str_radix(&hex[2..], 16).ok()?;
        Some(Route { worker, conn })
    }
}

/// What a datagram is, by its first byte (RFC 7983) and, for STUN, its header.
#[derive(Debug, PartialEq, Eq)]
pub enum Datagram<'a> {
    /// A STUN binding request with a USERNAME: the local ufrag, before the colon.
    BindingRequest { local_ufrag: &'a [u8] },
    /// Any other STUN message (responses, indications, requests without USERNAME).
    OtherStun,
    /// DTLS, RTP or RTCP: routed by address.
    Other,
    /// Nothing a WebRTC peer sends (empty, or an unassigned first byte).
    Junk,
}

const STUN_MAGIC_COOKIE: [u8; 4] = [0x21, 0x12, 0xA4, 0x42];
const STUN_BINDING_REQUEST: u16 = 0x0001;
const STUN_ATTR_USERNAME: u16 = 0x0006;

pub fn classify(data: &[u8]) -> Datagram<'_> {
    let Some(&first) = data.first() else {
        return Datagram::Junk;
    };
    match first {
        0..=3 => classify_stun(data),
        20..=63 | 128..=191 => Datagram::Other,
        _ => Datagram::Junk,
    }
}

fn classify_stun(data: &[u8]) -> Datagram<'_> {
    if data.len() < 20 || data[4..8] != STUN_MAGIC_COOKIE {
        return Datagram::Junk;
    }
    let msg_type = u16::from_be_bytes([data[0], data[1]]);
    if msg_type != STUN_BINDING_REQUEST {
        return Datagram::OtherStun;
    }
    let declared = usize::from(u16::from_be_bytes([data[2], data[3]]));
    let end = data.len().min(20 + declared);
    let mut at = 20;
    while at + 4 <= end {
        let typ = u16::from_be_bytes([data[at], data[at + 1]]);
        let len = usize::from(u16::from_be_bytes([data[at + 2], data[at + 3]]));
        let value_start = at + 4;
        let Some(value_end) = value_start.checked_add(len).filter(|e| *e <= end) else {
            break;
        };
        if typ == STUN_ATTR_USERNAME {
            let value = &data[value_start..value_end];
            let local = value.split(|b| *b == b':').next().unwrap_or(value);
            return Datagram::BindingRequest { local_ufrag: local };
        }
        // Attributes are padded to 4 bytes.
        at = value_start + len.div_ceil(4) * 4;
    }
    Datagram::OtherStun
}

/// Remote address → connection, learned from binding requests. Entries not used for
/// `idle` are forgotten (a live connection sends consent checks every few seconds), and the
/// table never holds more than `cap` entries: a flood of binding requests from forged
/// addresses fills it at most, and live entries are never evicted for new ones.
pub struct AddrTable {
    map: HashMap<SocketAddr, (Route, Instant)>,
    cap: usize,
    idle: Duration,
    last_sweep: Option<Instant>,
}

/// What became of one datagram.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    To(Route),
    /// No connection is known for this address, or the ufrag is not ours.
    Unroutable,
    Junk,
}

impl AddrTable {
    pub fn new(cap: usize, idle: Duration) -> Self {
        AddrTable {
            map: HashMap::new(),
            cap,
            idle,
            last_sweep: None,
        }
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Routes one datagram from `from`. `workers` bounds the worker index a ufrag may name.
    pub fn route(
        &mut self,
        data: &[u8],
        from: SocketAddr,
        workers: usize,
        now: Instant,
    ) -> Verdict {
        match classify(data) {
            Datagram::Junk => Verdict::Junk,
            Datagram::BindingRequest { local_ufrag } => match Ufrag::parse(local_ufrag) {
                Some(route) if usize::from(route.worker) < workers => Verdict::To(route),
                _ => Verdict::Unroutable,
            },
            Datagram::OtherStun | Datagram::Other => match self.map.get_mut(&from) {
                Some((route, seen)) => {
                    *seen = now;
                    Verdict::To(*route)
                }
                None => Verdict::Unroutable,
            },
        }
    }

    /// A connection sends to `addr`: what comes from there is its. The newest sender wins
    /// (a client's new connection from an old address). False when the table is full of
    /// live entries.
    pub fn learn(&mut self, addr: SocketAddr, route: Route, now: Instant) -> bool {
        if let Some(entry) = self.map.get_mut(&addr) {
            *entry = (route, now);
            return true;
        }
        if self.map.len() >= self.cap {
            self.sweep(now);
            if self.map.len() >= self.cap {
                return false;
            }
        }
        self.map.insert(addr, (route, now));
        true
    }

    /// Forgets every address of a connection (it closed).
    pub fn forget(&mut self, route: Route) {
        self.map.retain(|_, (r, _)| *r != route);
    }

    /// Forgets idle entries; runs at most once per `idle / 4` unless the table is full.
    /// (Connections keep their entries fresh: ICE consent checks come every few seconds.)
    pub fn maybe_sweep(&mut self, now: Instant) {
        let due = self
            .last_sweep
            .is_none_or(|t| now.saturating_duration_since(t) >= self.idle / 4);
        if due {
            self.sweep(now);
        }
    }

    fn sweep(&mut self, now: Instant) {
        let idle = self.idle;
        self.map
            .retain(|_, (_, seen)| now.saturating_duration_since(*seen) < idle);
        self.last_sweep = Some(now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// A binding request as a browser sends it (USERNAME, then other attributes).
    fn binding_request(username: &str) -> Vec<u8> {
        let mut attrs = Vec::new();
        let u = username.as_bytes();
        attrs.extend_from_slice(&STUN_ATTR_USERNAME.to_be_bytes());
        attrs.extend_from_slice(&(u.len() as u16).to_be_bytes());
        attrs.extend_from_slice(u);
        while attrs.len() % 4 != 0 {
            attrs.push(0);
        }
        // PRIORITY
        attrs.extend_from_slice(&[0x00, 0x24, 0x00, 0x04, 1, 2, 3, 4]);
        let mut m = vec![0x00, 0x01];
        m.extend_from_slice(&(attrs.len() as u16).to_be_bytes());
        m.extend_from_slice(&STUN_MAGIC_COOKIE);
        m.extend_from_slice(&[7; 12]);
        m.extend_from_slice(&attrs);
        m
    }

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn ufrags_carry_their_route() {
        let route = Route {
            worker: 3,
            conn: 0x1234_5678_9abc,
        };
        let u = Ufrag::make(route, rand::random());
        assert_eq!(u.len(), 22);
        assert!(u.chars().all(|c| c.is_ascii_alphanumeric()));
        assert_eq!(Ufrag::parse(u.as_bytes()), Some(route));
        assert_ne!(Ufrag::make(route, 1), Ufrag::make(route, 2));
    }

    #[test]
    fn binding_requests_name_their_connection_and_what_it_sends_to_teaches_the_address() {
        let mut t = AddrTable::new(16, Duration::from_secs(30));
        let now = Instant::now();
        let a = Route { worker: 0, conn: 7 };
        let b = Route { worker: 1, conn: 9 };
        let (ua, ub) = (Ufrag::make(a, 1), Ufrag::make(b, 2));
        // One client address, two ports: two connections.
        let (p1, p2) = (addr("10.0.0.1:5000"), addr("10.0.0.1:5001"));
        let dtls = [22u8, 254, 253, 0, 0];
        assert_eq!(t.route(&dtls, p1, 2, now), Verdict::Unroutable);
        assert_eq!(
            t.route(&binding_request(&format!("{ua}:remote1")), p1, 2, now),
            Verdict::To(a)
        );
        assert_eq!(
            t.route(&binding_request(&format!("{ub}:remote2")), p2, 2, now),
            Verdict::To(b)
        );
        // A binding request alone (its integrity is not checked here) teaches nothing.
        assert_eq!(t.route(&dtls, p1, 2, now), Verdict::Unroutable);
        assert!(t.learn(p1, a, now));
        assert!(t.learn(p2, b, now));
        assert_eq!(t.route(&dtls, p1, 2, now), Verdict::To(a));
        assert_eq!(t.route(&[0x80, 96, 0, 1], p2, 2, now), Verdict::To(b));
        // A stray datagram from elsewhere reaches nobody.
        assert_eq!(
            t.route(&dtls, addr("10.0.0.1:5002"), 2, now),
            Verdict::Unroutable
        );
        // A ufrag naming a worker that does not exist is not ours.
        let c = Ufrag::make(Route { worker: 5, conn: 1 }, 3);
        assert_eq!(
            t.route(&binding_request(&format!("{c}:x")), p1, 2, now),
            Verdict::Unroutable
        );
        assert_eq!(t.route(&dtls, p1, 2, now), Verdict::To(a));
        // The newest sender to an address owns it.
        assert!(t.learn(p1, b, now));
        assert_eq!(t.route(&dtls, p1, 2, now), Verdict::To(b));
        t.forget(b);
        assert_eq!(t.route(&dtls, p1, 2, now), Verdict::Unroutable);
        assert_eq!(t.route(&dtls, p2, 2, now), Verdict::Unroutable);
    }

    #[test]
    fn a_full_table_keeps_live_entries_and_forgets_idle_ones() {
        let mut t = AddrTable::new(2, Duration::from_secs(10));
        let t0 = Instant::now();
        let r = Route { worker: 0, conn: 1 };
        assert!(t.learn(addr("1.1.1.1:1"), r, t0));
        assert!(t.learn(addr("1.1.1.1:2"), r, t0));
        assert!(!t.learn(addr("1.1.1.1:3"), r, t0));
        // A known address is still routed while full.
        assert_eq!(
            t.route(&[23u8, 0], addr("1.1.1.1:1"), 1, t0),
            Verdict::To(r)
        );
        let later = t0 + Duration::from_secs(11);
        assert!(t.learn(addr("1.1.1.1:3"), r, later));
        assert_eq!(t.len(), 1);
    }

    #[test]
    fn junk_and_other_stun() {
        assert_eq!(classify(&[]), Datagram::Junk);
        assert_eq!(classify(&[70, 1, 2]), Datagram::Junk);
        assert_eq!(classify(&[0, 1, 0, 0]), Datagram::Junk);
        let mut response = binding_request("a:b");
        response[1] = 0x01;
        response[0] = 0x01; // 0x0101: binding success response
        assert_eq!(classify(&response), Datagram::OtherStun);
    }

    proptest! {
        #[test]
        fn never_panics_on_any_datagram(data in proptest::collection::vec(any::<u8>(), 0..300), port in 1u16..) {
            let mut t = AddrTable::new(4, Duration::from_secs(1));
            let from = SocketAddr::from(([127, 0, 0, 1], port));
            // Routing never learns: an unknown address stays unknown whatever it sends.
            let v = t.route(&data, from, 4, Instant::now());
            prop_assert!(matches!(v, Verdict::Unroutable | Verdict::Junk | Verdict::To(_)));
            prop_assert_eq!(t.len(), 0);
            prop_assert_ne!(t.route(&[23u8, 0], from, 4, Instant::now()), Verdict::To(Route { worker: 0, conn: 1 }));
        }

        #[test]
        fn stun_with_any_attributes_never_panics(
            attrs in proptest::collection::vec(any::<u8>(), 0..200),
            declared in any::<u16>(),
        ) {
            let mut m = vec![0x00, 0x01];
            m.extend_from_slice(&declared.to_be_bytes());
            m.extend_from_slice(&STUN_MAGIC_COOKIE);
            m.extend_from_slice(&[0; 12]);
            m.extend_from_slice(&attrs);
            let _ = classify(&m);
        }

        #[test]
        fn any_route_survives_its_ufrag(worker in any::<u8>(), conn in 0..=MAX_CONN_ID, r in any::<u64>()) {
            let route = Route { worker, conn };
            prop_assert_eq!(Ufrag::parse(Ufrag::make(route, r).as_bytes()), Some(route));
        }
    }
}
