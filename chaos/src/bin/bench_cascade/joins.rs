//! Parts 4 and 5: join → first remote packet, for a client in a region the room has not
//! reached yet and in one it has.
//!
//! Alternating samples: "not reached" uses a fresh room whose publisher on eu-1 is alone
//! (us-1 is not in the room; the join makes the coordinator add it, us-1 learns the room's
//! members and tracks over NATS and opens a relay link to eu-1: NATS offer/answer, ICE,
//! DTLS); "reached" joins one long-lived room in which an anchor subscriber on us-1 keeps
//! the link up and the publisher's tracks flowing across it. The difference is what the
//! first join into a region pays for the room's own link and membership, i.e. the most a
//! link per node pair (already up for another room) could save.

use crate::{leave, region_of, wait_packets, Args, Site, PUBLISHER_NODE, REMOTE_NODE};
use anyhow::{bail, Context, Result};
use chaos::{Client, PublishOpts};
use protocol::signal::ServerMessage;
use std::time::{Duration, Instant};

/// Bound on each wait of one sample (joined, offer, first packet).
const STEP_BOUND: Duration = Duration::from_secs(10);
/// Stop after this many failed samples in a row.
const MAX_CONSECUTIVE_FAILURES: usize = 5;

/// One measured join, times from just before `join` is sent.
#[derive(Debug, Clone, Copy)]
pub struct JoinSample {
    pub joined: Duration,
    pub offer: Duration,
    pub media: Duration,
    /// Wall clock when `join` was sent, µs since the epoch (to place the node's log lines).
    pub sent_unix_us: u64,
}

/// From us-1's log, for one not-reached join (µs after `join` was sent).
#[derive(Debug, Clone, Copy)]
pub struct LinkTimes {
    /// us-1 opened its end of the room's relay link.
    pub opened: f64,
    /// The publisher's first track arrived over the link at us-1.
    pub arrived: f64,
    /// The joiner's first packet.
    pub media: f64,
}

#[derive(Debug, Default)]
pub struct JoinCase {
    pub samples: Vec<JoinSample>,
    pub failures: Vec<String>,
    /// Not-reached samples only: the rooms, in sample order, for the log breakdown.
    rooms: Vec<String>,
    pub links: Vec<LinkTimes>,
}

pub struct JoinResult {
    /// One-way delay between regions, ms (0: none injected).
    pub delay_ms: u64,
    pub not_reached: JoinCase,
    pub reached: JoinCase,
}

pub async fn run(args: &Args, site: &Site<'_>, run_id: &str) -> Result<JoinResult> {
    site.wait_idle(Duration::from_secs(30)).await?;
    // The reached room: publisher on eu-1, an anchor on us-1 keeping the link in use.
    let room = format!("jr-{run_id}");
    let (publisher, pid) = publish(site, &room).await?;
    let r = async {
        let (anchor, _) = site.join(REMOTE_NODE, &room, "anchor").await?;
        let r = async {
            wait_packets(&anchor, &pid, 20, Duration::from_secs(20)).await?;
            samples(args, site, run_id, &room, &pid).await
        }
        .await;
        leave(&anchor).await;
        r
    }
    .await;
    leave(&publisher).await;
    let (mut not_reached, reached) = r?;
    not_reached.links = link_times(site, &not_reached);
    Ok(JoinResult {
        delay_ms: if site.geo.is_some() {
            args.geo_delay_ms
        } else {
            0
        },
        not_reached,
        reached,
    })
}

/// A publisher (audio + video) on eu-1, publishing.
async fn publish(site: &Site<'_>, room: &str) -> Result<(Client, String)> {
    let (c, joined) = site.join(PUBLISHER_NODE, room, "pub").await?;
    if let Err(e) = c.publish(PublishOpts::default()).await {
        leave(&c).await;
        return Err(e).context("publish");
    }
    Ok((c, joined.participant.id.to_string()))
}

async fn samples(
    args: &Args,
    site: &Site<'_>,
    run_id: &str,
    reached_room: &str,
    reached_pid: &str,
) -> Result<(JoinCase, JoinCase)> {
    let mut not_reached = JoinCase::default();
    let mut reached = JoinCase::default();
    let per_case = args.join_warmup + args.joins;
    let deadline = Instant::now() + Duration::from_secs(60 + 15 * per_case as u64);
    let gap = Duration::from_millis(args.join_gap_ms);
    let mut consecutive = 0usize;
    for i in 0..per_case {
        if Instant::now() >= deadline {
            bail!("join part exceeded its time bound after {i} rounds");
        }
        let measured = i >= args.join_warmup;
        let room = format!("jn-{run_id}-{i:03}");
        let fresh = fresh_room_join(site, &room, &format!("n{i:03}")).await;
        tokio::time::sleep(gap).await;
        let again = timed_join(site, reached_room, &format!("r{i:03}"), reached_pid).await;
        tokio::time::sleep(gap).await;
        for (case, outcome, what) in [
            (&mut not_reached, fresh, "not reached"),
            (&mut reached, again, "reached"),
        ] {
            match outcome {
                Ok(s) => {
                    consecutive = 0;
                    if measured {
                        case.samples.push(s);
                        if what == "not reached" {
                            case.rooms.push(room.clone());
                        }
                    }
                }
                Err(e) => {
                    consecutive += 1;
                    let msg = format!("{what} #{i}: {e:#}");
                    eprintln!("   join failed: {msg}");
                    case.failures.push(msg);
                    if consecutive >= MAX_CONSECUTIVE_FAILURES {
                        bail!("{MAX_CONSECUTIVE_FAILURES} joins in a row failed; last: {e:#}");
                    }
                }
            }
        }
        if (i + 1) % 10 == 0 {
            eprintln!("   {} / {per_case} rounds", i + 1);
        }
    }
    Ok((not_reached, reached))
}

/// A fresh room with a publisher on eu-1 only, then one timed join in us.
async fn fresh_room_join(site: &Site<'_>, room: &str, user: &str) -> Result<JoinSample> {
    let (publisher, pid) = publish(site, room).await?;
    // The publisher's tracks reach eu-1 with its first packets; give them a moment so the
    // sample times the region's join, not the publisher's.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let r = timed_join(site, room, user, &pid).await;
    leave(&publisher).await;
    r
}

/// Connects to us-1, then times `join` → `joined` → first `subscribe_offer` → first packet
/// from `publisher` (counters polled every millisecond), and leaves.
async fn timed_join(
    site: &Site<'_>,
    room: &str,
    user: &str,
    publisher: &str,
) -> Result<JoinSample> {
    let region = region_of(REMOTE_NODE)?;
    let c = Client::connect_with(
        &site.node(REMOTE_NODE)?.ws_url(),
        site.client_config(region)?,
    )
    .await
    .context("connect")?;
    let tok = site.token(room, user)?;
    let r = async {
        let sent_unix_us = chaos::payload::unix_now_us();
        let t0 = Instant::now();
        let j = c.join_in_region(room, &tok, region).await.context("join")?;
        let joined = t0.elapsed();
        if j.node.as_str() != REMOTE_NODE {
            bail!("served by {} instead of {REMOTE_NODE}", j.node);
        }
        c.wait_for(STEP_BOUND, |m| {
            matches!(m, ServerMessage::SubscribeOffer { .. })
        })
        .await
        .context("subscribe_offer")?;
        let offer = t0.elapsed();
        let limit = Instant::now() + STEP_BOUND;
        while c.received_from(publisher) == 0 {
            if Instant::now() >= limit {
                bail!(
                    "no packet from the publisher within {STEP_BOUND:?} of the offer (local errors: {:?})",
                    c.local_errors()
                );
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        Ok(JoinSample {
            joined,
            offer,
            media: t0.elapsed(),
            sent_unix_us,
        })
    }
    .await;
    leave(&c).await;
    r
}

// ---------------------------------------------------------------------------------------
// Where a not-reached join's time goes, from us-1's log.

/// For each not-reached sample whose room shows both lines in us-1's log: when the node
/// opened the room's relay link and when the first relayed track arrived. Best effort: a
/// log format or level without those lines gives none.
fn link_times(site: &Site<'_>, case: &JoinCase) -> Vec<LinkTimes> {
    let Ok(node) = site.node(REMOTE_NODE) else {
        return Vec::new();
    };
    let text = std::fs::read_to_string(node.log_path()).unwrap_or_default();
    case.samples
        .iter()
        .zip(&case.rooms)
        .filter_map(|(s, room)| {
            let opened = first_line_at(&text, room, "relay link opens")?;
            let arrived = first_line_at(&text, room, "relayed track arrived")?;
            let rel = |t: f64| t - s.sent_unix_us as f64;
            Some(LinkTimes {
                opened: rel(opened),
                arrived: rel(arrived),
                media: s.media.as_secs_f64() * 1e6,
            })
        })
        .collect()
}

/// µs since the epoch of the first log line holding `what` and the field `room=<room>`.
fn first_line_at(log: &str, room: &str, what: &str) -> Option<f64> {
    let field = format!("room={room}");
    log.lines()
        .filter(|l| l.contains(what))
        .find(|l| {
            l.split_whitespace()
                .any(|w| w.trim_end_matches(',') == field)
        })
        .and_then(|l| rfc3339_unix_us(l.split_whitespace().next()?))
}

/// `2026-11-21T05:12:00.123456Z` (tracing's default timestamp, UTC) as µs since the epoch.
fn rfc3339_unix_us(s: &str) -> Option<f64> {
    let s = s.strip_suffix('Z')?;
    let (date, time) = s.split_once('T')?;
    let mut d = date.split('-').map(|x| x.parse::<i64>().ok());
    let (y, m, day) = (d.next()??, d.next()??, d.next()??);
    let mut t = time.split(':');
    let (h, min, sec) = (
        t.next()?.parse::<f64>().ok()?,
        t.next()?.parse::<f64>().ok()?,
        t.next()?.parse::<f64>().ok()?,
    );
    let days = days_from_civil(y, m, day)?;
    Some(((days * 86_400) as f64 + h * 3600.0 + min * 60.0 + sec) * 1e6)
}

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> Option<i64> {
    if !(1..=12).contains(&m) || !(1..=31).contains(&d) {
        return None;
    }
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    Some(era * 146_097 + doe - 719_468)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_timestamps_and_fields_are_read() {
        assert_eq!(days_from_civil(1970, 1, 1), Some(0));
        assert_eq!(days_from_civil(2000, 3, 1), Some(11_017));
        let t = rfc3339_unix_us("2026-11-21T05:12:00.250000Z").unwrap();
        assert_eq!(t, 1_795_237_920_250_000.0);
        let log = "2026-11-21T05:12:00.250000Z  INFO node::actors::room::links: relay link opens room=jn-a-001 role=RelayIn\n\
2026-11-21T05:12:00.350000Z  INFO node::actors::room::links: relay link opens room=jn-a-002 role=RelayIn";
        assert_eq!(
            first_line_at(log, "jn-a-002", "relay link opens"),
            Some(t + 100_000.0)
        );
        assert_eq!(first_line_at(log, "jn-a-00", "relay link opens"), None);
    }
}
