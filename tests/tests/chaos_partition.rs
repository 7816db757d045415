//! A partition between two regions of a cluster of real processes, laid out by the chaos
//! runner's regions ([`chaos::runner::regions`]): eu (home, NATS) and us, one node each, two
//! coordinators, 20 ms one way between the regions. One room spans both: alice joins through
//! eu-1 from eu's client subnet, bob through us-1 from us's, both publish video.
//!
//! The partition cuts the relay between eu-1 and us-1 and us-1's NATS (it goes through the
//! eu–us link) for longer than the node timeout (3 s). What must hold: media across stops
//! while partitioned (the link drops packets, nothing new of alice's reaches bob), everyone
//! receives everyone again within a bound once healed, and the room's directory history
//! never had two origins at one epoch. What the cluster does in between (us-1 found dead,
//! fenced, bob moved) is observed and printed, not asserted: run with `--nocapture` to read
//! it.
//!
//! Three cases, one at a time: the origin at home (alice joins first), the origin in the
//! cut-off region (bob joins first: the room is placed on us-1, and eu's side takes it over
//! while us-1 still runs), and clients placed behind their region's links, so that a client
//! of us reaches eu-1 only across the partitioned link (bob, sent to eu-1 by the fence,
//! then gets media only after the heal; with clients only bound in their subnet, eu-1
//! reaches bob's host candidate directly and media flows again during the partition).

use chaos::invariants::single_origin;
use chaos::runner::monitor::Monitor;
use chaos::runner::regions::{self, Regions};
use chaos::sandbox::{Cluster, ClusterSpec};
use chaos::{mint_tokens, wait_until, Participant, ParticipantConfig, PublishOpts};
use protocol::token::Claims;
use protocol::{RoomId, UserId};
use std::time::Duration;
use tokio::time::Instant;

/// Bound on the first media, on media after the heal and on the cluster seeing every node.
const WAIT: Duration = Duration::from_secs(30);
const DELAY: Duration = Duration::from_millis(20);
/// Longer than the node timeout (3 s): us-1 is cut from NATS long enough to be found dead.
const PARTITION: Duration = Duration::from_secs(8);
/// Packets of alice's already past the link when it was cut, which may still reach bob.
const IN_FLIGHT: u64 = 10;
/// How often the cluster is looked at during the partition.
const SAMPLE: Duration = Duration::from_millis(100);

/// Eu and us, one node each, two coordinators; returns once every coordinator sees both
/// nodes. The cluster is killed on drop, the regions' proxies stop with `Regions`.
async fn start() -> anyhow::Result<(Cluster, Regions, tests::RunDir)> {
    tests::init_logs();
    let dir = std::env::temp_dir().join(format!("partition-{:016x}", rand::random::<u64>()));
    std::fs::create_dir_all(&dir)?;
    let run = tests::RunDir(dir.clone());
    let mut spec = ClusterSpec::new(&dir).coordinator("c1").coordinator("c2");
    spec.node_bin = env!("CARGO_BIN_EXE_cluster-node").into();
    spec.coordinator_bin = env!("CARGO_BIN_EXE_cluster-coordinator").into();
    spec.child_log = "info,webrtc=warn,rtc=error,rtc_ice=warn,rtc_dtls=error,rtc_srtp=error".into();
    let flags = ["--room-empty-grace-secs=1".to_owned()];
    // Below the ephemeral range (32768–), so no client socket takes a gateway's port; a
    // random block so that other tests on the same region subnets (tests/cascade.rs) rarely
    // meet ours, and another block when they do.
    let mut tries = 0;
    let regions = loop {
        tries += 1;
        let udp_base = 20_000 + 100 * (rand::random::<u16>() % 120);
        let laid = regions::lay_out(
            &mut spec,
            &[("eu", 1), ("us", 1)],
            udp_base,
            50,
            DELAY,
            rand::random(),
            &flags,
        )
        .await;
        match laid {
            Ok(r) => break r,
            Err(e) if tries < 3 && in_use(&e) => eprintln!("   {e:#}; another port block"),
            Err(e) => return Err(e),
        }
    };
    let cluster = Cluster::start(spec).await?;
    Ok((cluster, regions, run))
}

/// Whether `e` comes from a port someone else holds.
fn in_use(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::AddrInUse)
    })
}

async fn join(
    cluster: &Cluster,
    regions: &Regions,
    room: &RoomId,
    user: &str,
    node: &str,
    placed: bool,
) -> anyhow::Result<Participant> {
    let region = regions
        .region_of(node)
        .ok_or_else(|| anyhow::anyhow!("{node} is in no region"))?;
    let claims = Claims::new(room.clone(), UserId::new(user)?, 0, 0);
    let tokens = mint_tokens(cluster.api_secret(), claims, Duration::from_secs(600));
    let config = ParticipantConfig {
        client: if placed {
            regions.placed_client_config(&region, 0)
        } else {
            regions.client_config(&region, 0)
        }
        .ok_or_else(|| anyhow::anyhow!("no client address in {region}"))?,
        region: Some(region),
        ..ParticipantConfig::default()
    };
    let p = Participant::join(&cluster.node(node)?.ws_url(), room.as_str(), tokens, config).await?;
    p.publish(PublishOpts {
        audio: false,
        video: true,
        video_pps: 30,
        ..PublishOpts::default()
    })
    .await?;
    Ok(p)
}

/// `name` summed on process `id`'s `/metrics`; `None` when it does not answer.
async fn metric(cluster: &Cluster, id: &str, name: &str) -> Option<f64> {
    let p = cluster.procs().iter().find(|p| p.id() == id)?;
    let text = p.http_get("/metrics").await.ok()?;
    Some(chaos::bench::metric_sum(&text, name))
}

/// A participant's recoveries, times since the cut.
fn recoveries(p: &Participant, cut_at: Instant) -> Vec<String> {
    let since = |t: Instant| t.saturating_duration_since(cut_at);
    p.recoveries()
        .iter()
        .map(|r| {
            let end = match (&r.rejoined, &r.gave_up) {
                (Some(j), _) => format!(
                    "rejoined {:?} on {} ({}) at {:.1?}",
                    j.by,
                    j.node,
                    j.url,
                    since(j.at)
                ),
                (None, Some(e)) => format!("gave up: {e}"),
                (None, None) => "still recovering".to_owned(),
            };
            let media: Vec<String> = r
                .media_at
                .iter()
                .map(|(from, t)| format!("{from} at {:.1?}", since(*t)))
                .collect();
            format!(
                "{} noticed at {:.1?}, {} attempts, {end}, media: {}",
                r.cause,
                since(r.noticed_at),
                r.attempts,
                if media.is_empty() {
                    "none".to_owned()
                } else {
                    media.join(", ")
                }
            )
        })
        .collect()
}

/// What was seen during the partition, as times since it began.
#[derive(Debug, Default)]
struct Seen {
    /// Checked at this time into the partition, bob still on us-1: nothing had crossed.
    nothing_crossed_for: Duration,
    /// A coordinator counted fewer than two live nodes.
    dead_at: Option<(String, Duration)>,
    /// us-1's `node_fenced_total` rose.
    fenced_at: Option<Duration>,
    /// Bob's first recovery was noticed, and its cause.
    bob_noticed: Option<(String, Duration)>,
    /// Bob rejoined, on which node.
    bob_rejoined: Option<(String, Duration)>,
    /// A packet of alice's reached bob again, and one of bob's reached alice.
    bob_hears_alice: Option<Duration>,
    alice_hears_bob: Option<Duration>,
}

/// Who joins first (the room is placed in the first joiner's region: that node is the
/// origin) and how the clients sit.
struct Case {
    name: &'static str,
    first: &'static str,
    /// Clients placed behind their region's links ([`Regions::placed_client_config`]) rather
    /// than only bound in its subnet.
    placed: bool,
}

/// The cases share the machine's two cores and the region subnets: one at a time, so each
/// one's timings are its own.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partition_between_regions_stops_media_across_and_everyone_receives_after_the_heal(
) -> anyhow::Result<()> {
    partition(Case {
        name: "origin at home",
        first: "alice",
        placed: false,
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partition_cutting_off_the_origins_region_keeps_one_origin_per_epoch(
) -> anyhow::Result<()> {
    partition(Case {
        name: "origin cut off",
        first: "bob",
        placed: false,
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partition_between_regions_with_clients_behind_the_links() -> anyhow::Result<()> {
    partition(Case {
        name: "placed clients",
        first: "alice",
        placed: true,
    })
    .await
}

async fn partition(case: Case) -> anyhow::Result<()> {
    let _one = ONE_AT_A_TIME.lock().await;
    eprintln!("==== case: {}", case.name);
    let test_start = Instant::now();
    let (mut cluster, regions, _run) = start().await?;
    eprintln!("== cluster up in {:.1?}", test_start.elapsed());
    let room = RoomId::new(tests::room_name("part"))?;
    let t0 = Instant::now();
    let monitor = Monitor::start(
        cluster.nats_url(),
        vec![room.clone()],
        cluster.pids(),
        t0,
        Duration::from_secs(300),
    );
    let (alice, bob) = if case.first == "alice" {
        let alice = join(&cluster, &regions, &room, "alice", "eu-1", case.placed).await?;
        (
            alice,
            join(&cluster, &regions, &room, "bob", "us-1", case.placed).await?,
        )
    } else {
        let bob = join(&cluster, &regions, &room, "bob", "us-1", case.placed).await?;
        (
            join(&cluster, &regions, &room, "alice", "eu-1", case.placed).await?,
            bob,
        )
    };
    let (a, b) = tokio::join!(
        alice.wait_media_from(&["bob"], WAIT),
        bob.wait_media_from(&["alice"], WAIT)
    );
    a?;
    b?;
    assert_eq!(alice.joined().node.as_str(), "eu-1");
    assert_eq!(bob.joined().node.as_str(), "us-1");
    let origin = if case.first == "alice" {
        "eu-1"
    } else {
        "us-1"
    };
    wait_until(WAIT, "the monitor to read the room's entry", || async {
        match monitor.observed().history(&room).last() {
            Some(Some(_)) => Ok(()),
            last => Err(format!("{last:?}")),
        }
    })
    .await?;
    let entry = monitor.observed().history(&room).pop().flatten();
    assert_eq!(
        entry.as_ref().map(|e| e.node.as_str()),
        Some(origin),
        "the room is placed in the first joiner's region: {entry:?}"
    );
    let link = || regions.pair_stats("eu", "us").expect("the eu–us pair").link;
    let crossed = |s: &chaos::impair::LinkStats| s.forward.packets + s.reverse.packets;
    let dropped =
        |s: &chaos::impair::LinkStats| s.forward.dropped_partition + s.reverse.dropped_partition;
    assert!(crossed(&link()) > 0, "media crossed the eu–us link");
    eprintln!(
        "== everyone receives everyone {:.1?} after the joins; link {:?}",
        t0.elapsed(),
        link()
    );

    // The cut: the link drops what tries to cross, and nothing new of alice's reaches bob,
    // while alice's own media goes on (her publisher keeps sending).
    let sent = |stats: Vec<chaos::SentStats>| stats.iter().map(|s| s.sent).sum::<u64>();
    let sent_at_cut = sent(alice.sent_stats().await);
    let before = link();
    let bob_at_cut = bob.received_from("alice");
    let alice_at_cut = alice.received_from("bob");
    regions.partition("eu", "us", true)?;
    let cut_at = Instant::now();
    wait_until(
        Duration::from_secs(10),
        "the partition to drop media while alice sends on",
        || async {
            let now = link();
            let sent_now = sent(alice.sent_stats().await);
            let d = dropped(&now) - dropped(&before);
            if d >= 45 && sent_now >= sent_at_cut + 20 {
                Ok(())
            } else {
                Err(format!(
                    "dropped {d}, alice sent {}",
                    sent_now - sent_at_cut
                ))
            }
        },
    )
    .await?;
    let stopped_after = cut_at.elapsed();
    let (bob_now, alice_now) = (bob.received_from("alice"), alice.received_from("bob"));
    eprintln!(
        "== {stopped_after:.1?} into the partition: dropped {}, bob got {} more of alice's, \
         alice {} more of bob's",
        dropped(&link()) - dropped(&before),
        bob_now - bob_at_cut,
        alice_now - alice_at_cut
    );
    assert!(
        bob.recoveries().is_empty(),
        "bob still on us-1 while media stops: {:?}",
        bob.recoveries()
    );
    assert!(
        bob_now <= bob_at_cut + IN_FLIGHT,
        "nothing of alice's reaches bob through the partition: {} more",
        bob_now - bob_at_cut
    );
    assert!(
        alice_now <= alice_at_cut + IN_FLIGHT,
        "nothing of bob's reaches alice through the partition: {} more",
        alice_now - alice_at_cut
    );

    // The rest of the partition: watch what the cluster does, asserting only that nothing
    // crosses for as long as bob is on us-1 (a count read before seeing no recovery of his
    // was made while he still was).
    let mut seen = Seen::default();
    let (bob_base, alice_base) = (bob_now, alice_now);
    let fenced_base = metric(&cluster, "us-1", "node_fenced_total")
        .await
        .unwrap_or(0.0);
    while cut_at.elapsed() < PARTITION {
        let at = cut_at.elapsed();
        if seen.dead_at.is_none() {
            for c in ["c1", "c2"] {
                if metric(&cluster, c, "coord_live_nodes")
                    .await
                    .is_some_and(|n| n < 2.0)
                {
                    seen.dead_at = Some((c.to_owned(), at));
                    break;
                }
            }
        }
        if seen.fenced_at.is_none()
            && metric(&cluster, "us-1", "node_fenced_total")
                .await
                .is_some_and(|n| n > fenced_base)
        {
            seen.fenced_at = Some(at);
        }
        let (bob_hears, alice_hears) = (bob.received_from("alice"), alice.received_from("bob"));
        let recoveries = bob.recoveries();
        if recoveries.is_empty() {
            assert!(
                bob_hears <= bob_at_cut + IN_FLIGHT && alice_hears <= alice_at_cut + IN_FLIGHT,
                "media crossed the partition {at:.1?} into it, bob still on us-1: bob got {} \
                 more of alice's, alice {} more of bob's",
                bob_hears - bob_at_cut,
                alice_hears - alice_at_cut
            );
            seen.nothing_crossed_for = at;
        }
        if let Some(r) = recoveries.first() {
            seen.bob_noticed
                .get_or_insert((r.cause.to_string(), r.noticed_at - cut_at));
        }
        if let Some(j) = recoveries.iter().find_map(|r| r.rejoined.clone()) {
            seen.bob_rejoined
                .get_or_insert((j.node.to_string(), j.at - cut_at));
        }
        if seen.bob_hears_alice.is_none() && bob_hears > bob_base + IN_FLIGHT {
            seen.bob_hears_alice = Some(at);
        }
        if seen.alice_hears_bob.is_none() && alice_hears > alice_base + IN_FLIGHT {
            seen.alice_hears_bob = Some(at);
        }
        tokio::time::sleep(SAMPLE).await;
    }
    let during = link();
    eprintln!("== during the {PARTITION:?} partition: {seen:#?}");
    eprintln!(
        "   link dropped {} packets for the partition",
        dropped(&during) - dropped(&before)
    );
    assert!(
        dropped(&during) > dropped(&before),
        "the partition dropped packets"
    );

    // The heal: everyone receives everyone again, and the cluster counts every node.
    regions.partition("eu", "us", false)?;
    let healed_at = Instant::now();
    let cluster_ref = &cluster;
    let (a, b, ready) = tokio::join!(
        async {
            alice.wait_media_since("bob", healed_at, WAIT).await?;
            anyhow::Ok(healed_at.elapsed())
        },
        async {
            bob.wait_media_since("alice", healed_at, WAIT).await?;
            anyhow::Ok(healed_at.elapsed())
        },
        async {
            wait_until(WAIT, "every coordinator to count every node", || async {
                let waiting = cluster_ref.not_ready().await;
                waiting
                    .is_empty()
                    .then_some(())
                    .ok_or_else(|| waiting.join("; "))
            })
            .await?;
            anyhow::Ok(healed_at.elapsed())
        }
    );
    let (alice_back, bob_back, ready) = (a?, b?, ready?);
    eprintln!(
        "== after the heal: alice hears bob in {alice_back:.1?}, bob hears alice in \
         {bob_back:.1?}, every coordinator counts both nodes in {ready:.1?}; alice on {}, \
         bob on {}",
        alice.joined().node,
        bob.joined().node
    );
    for (who, p) in [("alice", &alice), ("bob", &bob)] {
        for line in recoveries(p, cut_at) {
            eprintln!("   {who}: {line}");
        }
    }
    // Media flows on for a second more, both ways.
    let settled = Instant::now();
    let (a, b) = tokio::join!(
        alice.wait_media_since("bob", settled, WAIT),
        bob.wait_media_since("alice", settled, WAIT)
    );
    a?;
    b?;

    // The directory: one origin per epoch over every revision the monitor saw.
    let observed = monitor.finish(cluster.nats_url(), t0).await;
    for (seen, entry) in observed.timeline(&room) {
        let cut = seen.checked_sub(cut_at - t0);
        match entry {
            Some(e) => eprintln!(
                "   {seen:>8.1?} (cut {cut:?}): origin {} epoch {} nodes {:?} by {}",
                e.node,
                e.epoch,
                e.members()
                    .iter()
                    .map(|n| n.to_string())
                    .collect::<Vec<_>>(),
                e.coordinator
            ),
            None => eprintln!("   {seen:>8.1?}: deleted"),
        }
    }
    let check = single_origin(&room, &observed.history(&room));
    assert!(check.passed(), "{check:?}");

    Participant::leave_all([&alice, &bob]).await;
    let exited = cluster.first_exited();
    cluster.stop();
    for line in cluster.health() {
        eprintln!("   health: {line}");
    }
    assert_eq!(exited, None, "no process died");
    eprintln!("== test took {:.1?}", test_start.elapsed());
    Ok(())
}
