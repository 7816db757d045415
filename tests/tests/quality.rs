//! The node's quality metrics against a real impairment: a real nats-server, a coordinator
//! and an in-process node of region `eu` whose media sits behind its `chaos::geo` gateway,
//! and real WebRTC clients. Alice is in the client-only region `eu-lossy`, behind the
//! (eu, eu-lossy) link, which delays and drops datagrams both ways; bob is in the node's own
//! region and crosses nothing. Both publish and subscribe to each other, so the room has one
//! impaired and one clean connection each way, and bob receives media that lost packets on
//! alice's upstream path (loss the node's downstream figures must not blame on bob's path).
//!
//! One test only: the histograms are process-wide, and a second test's media in the same
//! process would land in them.

use chaos::PublishOpts;
use serde_json::Value;
use std::collections::HashMap;
use std::time::Duration;
use tests::lossy_cell::{LossyCell, LOSSY, NODE};
use tests::{room_name, wait_media, wait_until, NodeHandle};

const WAIT: Duration = Duration::from_secs(30);
/// The link's loss, each way.
const LOSS: f64 = 0.10;
/// The link's delay, each way.
const DELAY: Duration = Duration::from_millis(40);
/// How long a closed room's series stay (the node's `room_series_ttl`).
const ROOM_SERIES_TTL: Duration = Duration::from_secs(3);

/// Audio at 100 packets/s (1.6 % resolution per second of loss), video at 100.
fn media() -> PublishOpts {
    PublishOpts {
        audio_pps: 100,
        ..PublishOpts::default()
    }
}

/// Payload bits per second `media()` sends, audio and video.
fn sent_bps() -> (f64, f64) {
    let m = media();
    (
        f64::from(m.audio_pps) * m.audio_payload as f64 * 8.0,
        f64::from(m.video_pps) * m.video_payload as f64 * 8.0,
    )
}

/// Each member's `quality` in `room` of the node's snapshot, by user.
async fn quality(node: &NodeHandle, room: &str) -> HashMap<String, Value> {
    let snap = node.snapshot().await;
    let mut out = HashMap::new();
    for r in snap["rooms"].as_array().into_iter().flatten() {
        if r["id"] != room {
            continue;
        }
        for m in r["members"].as_array().into_iter().flatten() {
            if let Some(id) = m["id"].as_str() {
                out.insert(id.to_owned(), m["quality"].clone());
            }
        }
    }
    out
}

/// A user's upstream track of `kind` in a quality view.
fn up<'a>(q: &'a HashMap<String, Value>, user: &str, kind: &str) -> Option<&'a Value> {
    q.get(user)?["up"]
        .as_array()?
        .iter()
        .find(|t| t["kind"] == kind)
}

/// A user's downstream stream of `kind` in a quality view.
fn down<'a>(q: &'a HashMap<String, Value>, user: &str, kind: &str) -> Option<&'a Value> {
    q.get(user)?["down"]["streams"]
        .as_array()?
        .iter()
        .find(|t| t["kind"] == kind)
}

fn num(v: &Value, key: &str) -> f64 {
    v[key].as_f64().unwrap_or(f64::NAN)
}

/// Lost / (lost + received) between two views of an upstream track.
fn up_loss(before: &Value, after: &Value) -> f64 {
    let lost = num(after, "lost") - num(before, "lost");
    let received = num(after, "packets") - num(before, "packets");
    lost / (lost + received)
}

/// Lost / sent on the node's path between two views of a downstream stream.
fn down_loss(before: &Value, after: &Value) -> f64 {
    (num(after, "lost") - num(before, "lost")) / (num(after, "packets") - num(before, "packets"))
}

/// One histogram series of the node's `/metrics` text: its cumulative buckets and count.
#[derive(Debug, Default, Clone)]
struct Histogram {
    buckets: Vec<(f64, f64)>,
    count: f64,
    sum: f64,
}

impl Histogram {
    /// `name{labels}` (labels in the exporter's order) from the metrics text.
    fn read(text: &str, name: &str, labels: &str) -> Histogram {
        let mut h = Histogram::default();
        for line in text.lines() {
            let Some((series, value)) = line.rsplit_once(' ') else {
                continue;
            };
            let value: f64 = value.parse().unwrap_or(f64::NAN);
            if let Some(rest) = series.strip_prefix(&format!("{name}_bucket{{{labels},le=\"")) {
                let le = rest.trim_end_matches("\"}");
                let le = if le == "+Inf" {
                    f64::INFINITY
                } else {
                    le.parse().unwrap_or(f64::NAN)
                };
                h.buckets.push((le, value));
            } else if series == format!("{name}_count{{{labels}}}") {
                h.count = value;
            } else if series == format!("{name}_sum{{{labels}}}") {
                h.sum = value;
            }
        }
        h
    }

    /// The observations made since `before`.
    fn since(&self, before: &Histogram) -> Histogram {
        let at = |le: f64| {
            before
                .buckets
                .iter()
                .find(|b| b.0 == le)
                .map_or(0.0, |b| b.1)
        };
        Histogram {
            buckets: self
                .buckets
                .iter()
                .map(|(le, n)| (*le, n - at(*le)))
                .collect(),
            count: self.count - before.count,
            sum: self.sum - before.sum,
        }
    }

    /// The share of observations in (lo, hi] (bucket bounds).
    fn share(&self, lo: f64, hi: f64) -> f64 {
        let le = |x: f64| {
            if x < 0.0 {
                return 0.0;
            }
            self.buckets
                .iter()
                .find(|b| b.0 == x)
                .map_or(f64::NAN, |b| b.1)
        };
        (le(hi) - le(lo)) / self.count
    }
}

/// The value of a gauge or counter series, if present.
fn series(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quality_metrics_show_loss_and_delay_on_the_impaired_connections_only() -> anyhow::Result<()>
{
    let cell = LossyCell::start(|c| c.room_series_ttl = ROOM_SERIES_TTL).await?;
    cell.net.update_link(NODE, LOSSY, |i| i.delay = DELAY);
    let room = room_name("quality");
    let alice = cell.join(LOSSY, &room, "alice").await?;
    alice.publish(media()).await?;
    let bob = cell.join(NODE, &room, "bob").await?;
    bob.publish(media()).await?;
    wait_media(&bob, &["alice"], 300).await?;
    wait_media(&alice, &["bob"], 300).await?;
    // Loss starts on established connections (see client_impairment.rs for why).
    cell.net.update_link(NODE, LOSSY, |i| i.loss = LOSS);
    // The first interval that is all under loss starts with the next sample.
    let first = quality(&cell.node, &room).await;
    wait_until(WAIT, "a quality sample under loss", || async {
        let q = quality(&cell.node, &room).await;
        match (up(&first, "bob", "audio"), up(&q, "bob", "audio")) {
            (Some(a), Some(b)) if num(b, "packets") > num(a, "packets") => Ok(()),
            _ => Err(format!("{q:?}")),
        }
    })
    .await?;
    let before = quality(&cell.node, &room).await;
    let metrics_before = node::metrics::render();

    // 15 s of media each way.
    let window = 1_500.0;
    wait_until(
        Duration::from_secs(60),
        "15 s of quality samples",
        || async {
            let q = quality(&cell.node, &room).await;
            let grown = |user: &str| {
                up(&q, user, "audio")
                    .zip(up(&before, user, "audio"))
                    .map_or(0.0, |(a, b)| num(a, "packets") - num(b, "packets"))
            };
            let downs = |user: &str| {
                down(&q, user, "audio")
                    .zip(down(&before, user, "audio"))
                    .map_or(0.0, |(a, b)| num(a, "packets") - num(b, "packets"))
            };
            let got = [grown("alice"), grown("bob"), downs("alice"), downs("bob")];
            if got.iter().all(|n| *n >= window) {
                Ok(())
            } else {
                Err(format!(
                    "audio packets counted so far (up alice, bob; down alice, bob): {got:?}"
                ))
            }
        },
    )
    .await?;
    let after = quality(&cell.node, &room).await;
    let text = node::metrics::render();
    eprintln!("quality before: {before:#?}\nafter: {after:#?}");

    // (a) The snapshot: loss near the link's on alice's audio both ways, none on bob's. Video
    // is repaired by NACKs both ways, so it shows little.
    let view = |q: &HashMap<String, Value>, user: &str, kind: &str, way: &str| {
        let v = if way == "up" {
            up(q, user, kind)
        } else {
            down(q, user, kind)
        };
        v.cloned()
            .unwrap_or_else(|| panic!("{user} {way} {kind} in {q:?}"))
    };
    let mut losses = HashMap::new();
    for user in ["alice", "bob"] {
        for kind in ["audio", "video"] {
            let (b, a) = (
                view(&before, user, kind, "up"),
                view(&after, user, kind, "up"),
            );
            losses.insert((user, kind, "up"), up_loss(&b, &a));
            let (b, a) = (
                view(&before, user, kind, "down"),
                view(&after, user, kind, "down"),
            );
            losses.insert((user, kind, "down"), down_loss(&b, &a));
        }
    }
    eprintln!("loss over the window: {losses:?}");
    for way in ["up", "down"] {
        let alice = losses[&("alice", "audio", way)];
        assert!(
            (LOSS * 0.6..=LOSS * 1.5).contains(&alice),
            "alice's {way} audio loss {alice:.4}, the link drops {LOSS}"
        );
        let bob = losses[&("bob", "audio", way)];
        assert!(
            bob <= 0.01,
            "bob's {way} audio loss {bob:.4} on a clean path"
        );
        for user in ["alice", "bob"] {
            let video = losses[&(user, "video", way)];
            assert!(
                video <= LOSS * 0.5,
                "{user}'s {way} video repaired: {video:.4}"
            );
        }
    }
    // Bitrate: what the publishers send, and what the node sends bob (alice's media less
    // what her path took) and alice (bob's, all of it).
    let (audio_bps, video_bps) = sent_bps();
    let near = |got: f64, want: f64| (want * 0.75..=want * 1.25).contains(&got);
    for (kind, want) in [("audio", audio_bps), ("video", video_bps)] {
        let bob_up = num(&view(&after, "bob", kind, "up"), "bitrate_bps");
        assert!(
            near(bob_up, want),
            "bob's {kind} up {bob_up:.0} bps, sent {want:.0}"
        );
        let alice_down = num(&view(&after, "alice", kind, "down"), "bitrate_bps");
        assert!(
            near(alice_down, want),
            "alice's {kind} down {alice_down:.0} bps, bob sent {want:.0}"
        );
    }
    // RTT: the link's delay both ways on alice's connection, next to nothing on bob's.
    wait_until(WAIT, "round trips in the snapshot", || async {
        let q = quality(&cell.node, &room).await;
        let rtt = |user: &str| q.get(user).and_then(|v| v["down"]["rtt_ms"].as_f64());
        match (rtt("alice"), rtt("bob")) {
            (Some(a), Some(b)) => {
                let min = 2.0 * DELAY.as_secs_f64() * 1e3;
                assert!(
                    (min..=min + 100.0).contains(&a),
                    "alice's rtt {a:.1} ms, the link adds {min} ms"
                );
                assert!(b < 20.0, "bob's rtt {b:.1} ms");
                Ok(())
            }
            other => Err(format!("{other:?}")),
        }
    })
    .await?;

    // (b) The histograms: about half the loss samples from alice's connections (near 10 %),
    // half from bob's (near 0), and round trips in two groups.
    for way in ["up", "down"] {
        let labels = format!("direction=\"{way}\",kind=\"audio\"");
        let h = Histogram::read(&text, "sfu_quality_packet_loss_ratio", &labels).since(
            &Histogram::read(&metrics_before, "sfu_quality_packet_loss_ratio", &labels),
        );
        let (clean, lossy) = (h.share(-1.0, 0.02), h.share(0.02, 0.2));
        eprintln!("{way} audio loss histogram: {h:?}; clean {clean:.2}, lossy {lossy:.2}");
        assert!(
            h.count >= 20.0,
            "{way}: a sample a second per stream: {h:?}"
        );
        assert!(
            (0.3..=0.7).contains(&clean),
            "{way}: bob's samples near 0: {h:?}"
        );
        assert!(
            (0.3..=0.7).contains(&lossy),
            "{way}: alice's near {LOSS}: {h:?}"
        );
        let mean = h.sum / h.count;
        assert!((0.02..=0.1).contains(&mean), "{way}: mean loss {mean:.4}");
        let labels = format!("direction=\"{way}\",kind=\"audio\"");
        let b = Histogram::read(&text, "sfu_quality_bitrate_bps", &labels).since(&Histogram::read(
            &metrics_before,
            "sfu_quality_bitrate_bps",
            &labels,
        ));
        assert!(
            b.share(64e3, 256e3) >= 0.9,
            "{way}: audio near {audio_bps} bps: {b:?}"
        );
        let j = Histogram::read(&text, "sfu_quality_jitter_seconds", &labels).since(
            &Histogram::read(&metrics_before, "sfu_quality_jitter_seconds", &labels),
        );
        assert!(j.count >= 20.0, "{way}: jitter samples: {j:?}");
    }
    let rtt = Histogram::read(&text, "sfu_quality_rtt_seconds", "direction=\"down\"").since(
        &Histogram::read(
            &metrics_before,
            "sfu_quality_rtt_seconds",
            "direction=\"down\"",
        ),
    );
    eprintln!("rtt histogram: {rtt:?}");
    assert!(rtt.share(-1.0, 0.025) >= 0.3, "bob's round trips: {rtt:?}");
    assert!(rtt.share(0.05, 0.2) >= 0.3, "alice's round trips: {rtt:?}");

    // (c) The room's own series, while it lives ...
    let label = format!("{{room=\"{room}\"}}");
    wait_until(WAIT, "the room's series", || async {
        let text = node::metrics::render();
        let got = (
            series(&text, &format!("sfu_room_participants{label}")),
            series(&text, &format!("sfu_room_tracks{label}")),
            series(&text, &format!("sfu_room_packets_forwarded_total{label}")),
        );
        match got {
            (Some(2.0), Some(4.0), Some(f)) if f > 0.0 => Ok(()),
            _ => Err(format!("{got:?}")),
        }
    })
    .await?;
    alice.leave().await?;
    bob.leave().await?;
    // ... counts what the node forwarded (the only room of the process; both add up the
    // same batches of 64 packets per track, the room's a second later) ...
    wait_until(
        WAIT,
        "the room's forwarded count to match the node's",
        || async {
            let text = node::metrics::render();
            let room_total = series(&text, &format!("sfu_room_packets_forwarded_total{label}"));
            let node_total = cell.node.counters().packets_forwarded as f64;
            match room_total {
                Some(r) if (node_total - r).abs() <= 4.0 * 64.0 && r > 0.0 => Ok(()),
                other => Err(format!("room {other:?}, node {node_total}")),
            }
        },
    )
    .await?;
    // ... and leaves `/metrics` once the room has closed, while the node's own stay.
    wait_until(WAIT, "the closed room's series to go", || async {
        let text = node::metrics::render();
        let left: Vec<&str> = text.lines().filter(|l| l.contains(&room)).collect();
        if left.is_empty() {
            Ok(())
        } else {
            Err(format!("{left:?}"))
        }
    })
    .await?;
    let text = node::metrics::render();
    assert!(
        text.contains("sfu_quality_packet_loss_ratio_count{direction=\"up\",kind=\"audio\"}"),
        "the histograms stay: {text}"
    );
    Ok(())
}
