//! The little the node reads from client SDP itself: which SSRCs an offer still sends, and
//! the ICE credentials that tell a new connection from a renegotiation of the old one.

use std::collections::{HashMap, HashSet};

/// One media section of an offer, as far as publishing is concerned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Section {
    /// `audio`, `video`, `application`, ... (the m-line's first word).
    pub media: String,
    pub mid: String,
    /// `sendonly`/`sendrecv` (the default) on a live port.
    pub sending: bool,
    pub ssrcs: Vec<u32>,
}

pub fn sections(sdp: &str) -> Vec<Section> {
    sdp.split("\nm=")
        .skip(1)
        .map(|section| {
            let lines = || section.lines().map(str::trim);
            let port_zero = lines()
                .next()
                .and_then(|l| l.split_whitespace().nth(1))
                .is_some_and(|p| p == "0");
            let not_sending = lines().any(|l| l == "a=inactive" || l == "a=recvonly");
            let mut ssrcs: Vec<u32> = lines()
                .filter_map(|l| {
                    l.strip_prefix("a=ssrc:")
                        .and_then(|r| r.split_whitespace().next())
                        .and_then(|n| n.parse().ok())
                })
                .collect();
            ssrcs.dedup();
            Section {
                media: lines()
                    .next()
                    .and_then(|l| l.split_whitespace().next())
                    .unwrap_or_default()
                    .to_owned(),
                mid: lines()
                    .find_map(|l| l.strip_prefix("a=mid:"))
                    .unwrap_or_default()
                    .to_owned(),
                sending: !port_zero && !not_sending,
                ssrcs,
            }
        })
        .collect()
}

/// Audio and video sections an offer sends on: the tracks it publishes.
pub fn sending_tracks(sdp: &str) -> usize {
    sections(sdp)
        .iter()
        .filter(|s| s.sending && (s.media == "audio" || s.media == "video"))
        .count()
}

/// What each media section (by mid) sent in the last accepted offer.
pub type SendingByMid = HashMap<String, Vec<u32>>;

/// SSRCs that stopped between the previous offer and `offer`: their section went
/// `inactive`/`recvonly`/port 0 (a removed track carries no `a=ssrc` any more, so the mid is
/// what identifies it), or now sends other SSRCs (a replaced track). Returns the stopped
/// SSRCs and what `offer` sends, to compare the next offer with.
pub fn stopped_ssrcs(previous: &SendingByMid, offer: &str) -> (HashSet<u32>, SendingByMid) {
    let mut now = SendingByMid::new();
    for s in sections(offer) {
        if s.sending && !s.ssrcs.is_empty() {
            now.insert(s.mid, s.ssrcs);
        }
    }
    let stopped = previous
        .iter()
        .flat_map(|(mid, ssrcs)| {
            let still = now.get(mid);
            ssrcs
                .iter()
                .filter(move |ssrc| !still.is_some_and(|s| s.contains(ssrc)))
                .copied()
        })
        .collect();
    (stopped, now)
}

/// The first `a=ice-ufrag` of an SDP: a new value means a new connection (or an ICE restart).
pub fn ice_ufrag(sdp: &str) -> Option<&str> {
    sdp.lines()
        .map(str::trim)
        .find_map(|l| l.strip_prefix("a=ice-ufrag:"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const OFFER: &str = "v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n\
a=group:BUNDLE 0 1 2\r\n\
m=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=mid:0\r\na=ice-ufrag:abcd\r\na=sendonly\r\na=ssrc:111 cname:x\r\na=ssrc:111 msid:s a\r\n\
m=video 9 UDP/TLS/RTP/SAVPF 96 97\r\na=mid:1\r\na=inactive\r\na=ssrc:222 cname:x\r\n\
m=video 9 UDP/TLS/RTP/SAVPF 96 97\r\na=mid:2\r\na=sendrecv\r\na=ssrc-group:FID 333 334\r\na=ssrc:333 cname:x\r\na=ssrc:334 cname:x\r\n\
m=video 0 UDP/TLS/RTP/SAVPF 96\r\na=mid:3\r\na=ssrc:444 cname:x\r\n";

    #[test]
    fn sections_are_read_with_direction() {
        let got = sections(OFFER);
        assert_eq!(got.len(), 4);
        assert_eq!(
            got[0],
            Section {
                media: "audio".into(),
                mid: "0".into(),
                sending: true,
                ssrcs: vec![111]
            }
        );
        assert!(!got[1].sending && !got[3].sending);
        assert_eq!(got[2].ssrcs, vec![333, 334]);
        // Two tracks: the audio and the sendrecv video; the inactive and port-0 ones not.
        assert_eq!(sending_tracks(OFFER), 2);
        let with_data =
            format!("{OFFER}m=application 9 UDP/DTLS/SCTP webrtc-datachannel\r\na=mid:4\r\n");
        assert_eq!(sending_tracks(&with_data), 2, "a data channel is no track");
    }

    #[test]
    fn a_section_going_inactive_stops_its_ssrcs() {
        let (stopped, sending) = stopped_ssrcs(&SendingByMid::new(), OFFER);
        assert!(stopped.is_empty());
        assert_eq!(sending.len(), 2);
        // mid 0 goes inactive without its ssrc lines, mid 2 switches to another ssrc.
        let next = "v=0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=mid:0\r\na=inactive\r\n\
m=video 9 UDP/TLS/RTP/SAVPF 96\r\na=mid:2\r\na=sendonly\r\na=ssrc:555 cname:x\r\n";
        let (stopped, sending) = stopped_ssrcs(&sending, next);
        assert_eq!(stopped, HashSet::from([111, 333, 334]));
        assert_eq!(sending.get("2"), Some(&vec![555]));
    }

    #[test]
    fn ufrag_is_read() {
        assert_eq!(ice_ufrag(OFFER), Some("abcd"));
        assert_eq!(ice_ufrag("v=0\r\n"), None);
    }
}
