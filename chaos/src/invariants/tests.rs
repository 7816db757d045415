//! Every checker passes a healthy input and fails at least one broken one, so none can
//! pass vacuously.

use super::*;
use protocol::cluster::RoomNode;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

fn node(s: &str) -> NodeId {
    NodeId::new(s).unwrap()
}

fn user(s: &str) -> UserId {
    UserId::new(s).unwrap()
}

fn room() -> RoomId {
    RoomId::new("room-1").unwrap()
}

fn put(origin: &str, epoch: u64, nodes: &[&str]) -> Option<RoomAssignment> {
    let ids: Vec<NodeId> = nodes.iter().map(|n| node(n)).collect();
    Some(RoomAssignment::on_nodes(
        room(),
        epoch,
        &node(origin),
        &ids,
        "eu",
    ))
}

fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

/// The evidence of a failed check, all lines joined; panics on a pass.
fn evidence(check: Check) -> String {
    match check.verdict {
        Verdict::Fail { evidence } => evidence.join("\n"),
        Verdict::Pass { checked } => panic!("{:?} passed: {checked}", check.invariant),
    }
}

fn assert_has(evidence: &str, want: &str) {
    assert!(evidence.contains(want), "want {want:?} in:\n{evidence}");
}

fn assert_nothing_to_check(check: Check) {
    assert_has(&evidence(check), "nothing to check: ");
}

fn assert_pass(check: Check) {
    assert!(check.passed(), "{check:?}");
}

#[test]
fn a_check_serializes_flat_and_caps_its_evidence() {
    let check = Check::judge(
        Invariant::NoPanic,
        (0..25).map(|i| i.to_string()).collect(),
        String::new,
    );
    let json = serde_json::to_value(&check).unwrap();
    assert_eq!(json["invariant"], "no_panic");
    assert_eq!(json["verdict"], "fail");
    let lines = json["evidence"].as_array().unwrap();
    assert_eq!(lines.len(), MAX_EVIDENCE + 1);
    assert_eq!(lines[MAX_EVIDENCE], "… and 5 more");
    let pass = Check::judge(Invariant::SingleOrigin, vec![], || "x".into());
    assert_eq!(
        serde_json::to_value(&pass).unwrap(),
        serde_json::json!({"invariant": "single_origin", "verdict": "pass", "checked": "x"})
    );
}

#[test]
fn single_origin_holds_through_failover_and_reopen() {
    let history = [
        put("a", 1, &["a"]),
        put("a", 1, &["a", "b"]),
        put("b", 2, &["b"]),
        None,
        put("c", 3, &["c"]),
        put("c", 3, &[]),
    ];
    assert_pass(single_origin(&room(), &history));
}

#[test]
fn single_origin_fails_on_two_origins_at_one_epoch() {
    let e = evidence(single_origin(
        &room(),
        &[put("a", 1, &["a", "b"]), put("b", 1, &["a", "b"])],
    ));
    assert_has(&e, "epoch 1: origin a at #0, origin b at #1");
}

#[test]
fn single_origin_fails_when_an_epoch_goes_back_or_a_reopen_does_not_advance() {
    let back = evidence(single_origin(
        &room(),
        &[put("a", 2, &["a"]), put("a", 1, &["a"])],
    ));
    assert_has(&back, "room-1#1: epoch went back to 1 from 2 at #0");
    let reopen = evidence(single_origin(
        &room(),
        &[put("a", 2, &["a"]), None, put("a", 2, &["a"])],
    ));
    assert_has(
        &reopen,
        "room-1#2: reopened at epoch 2, not past epoch 2 of #0",
    );
}

#[test]
fn single_origin_fails_on_an_origin_outside_its_nodes_and_on_nothing() {
    let e = evidence(single_origin(&room(), &[put("a", 1, &["b", "c"])]));
    assert_has(&e, "room-1#0: origin a not among its nodes [b, c]");
    assert_nothing_to_check(single_origin(&room(), &[]));
}

/// A history as the coordinator writes it: nodes join and leave, the origin moves on with
/// the next epoch, the room closes and reopens past its last epoch.
fn valid_history(rng: &mut StdRng) -> Vec<Option<RoomAssignment>> {
    let names = ["n1", "n2", "n3", "n4"];
    let mut epoch = 1;
    let mut origin = names[rng.gen_range(0..4)];
    let mut nodes = vec![origin];
    let mut out = vec![put(origin, epoch, &nodes)];
    for _ in 0..rng.gen_range(1..30) {
        let open = out.last().unwrap().is_some();
        match rng.gen_range(0..4) {
            _ if !open => {
                epoch += 1;
                origin = names[rng.gen_range(0..4)];
                nodes = vec![origin];
            }
            0 => {
                let joins = names[rng.gen_range(0..4)];
                if !nodes.contains(&joins) {
                    nodes.push(joins);
                }
            }
            1 if nodes.len() > 1 => {
                nodes.retain(|n| *n != origin);
                origin = nodes[0];
                epoch += 1;
            }
            2 => {
                out.push(None);
                continue;
            }
            _ => nodes.retain(|n| *n == origin || rng.gen_bool(0.5)),
        }
        out.push(put(origin, epoch, &nodes));
    }
    out
}

#[test]
fn single_origin_passes_valid_histories_and_catches_an_injected_second_origin() {
    let mut rng = StdRng::seed_from_u64(8);
    let (mut deletes, mut moves) = (0, 0);
    for case in 0..300 {
        let mut history = valid_history(&mut rng);
        assert_pass(single_origin(&room(), &history));
        deletes += history.iter().filter(|e| e.is_none()).count();
        moves += history.iter().flatten().filter(|a| a.epoch > 1).count();
        let puts: Vec<usize> = (0..history.len())
            .filter(|&i| history[i].is_some())
            .collect();
        let at = puts[rng.gen_range(0..puts.len())];
        let mut intruder = history[at].clone().unwrap();
        intruder.node = node("intruder");
        intruder.nodes.push(RoomNode {
            node: node("intruder"),
            region: "eu".into(),
        });
        history.insert(at + 1, Some(intruder));
        let e = evidence(single_origin(&room(), &history));
        assert!(e.contains("origin intruder at"), "case {case}: {e}");
    }
    assert!(
        deletes > 100 && moves > 100,
        "{deletes} deletes, {moves} moved origins"
    );
}

fn death(name: &str, at: u64, back: Option<u64>) -> Death {
    let (at, back) = (secs(at), back.map(secs));
    let node = node(name);
    Death { node, at, back }
}

fn timeline() -> Vec<(Duration, Option<RoomAssignment>)> {
    vec![
        (secs(0), put("a", 1, &["a", "b"])),
        (secs(12), put("a", 1, &["a"])),
        (secs(30), None),
    ]
}

#[test]
fn live_nodes_holds_when_a_dead_node_leaves_within_the_bound() {
    let deaths = [
        death("b", 10, None),
        // Dead for a moment only: listed all along, never a dead node for long.
        death("a", 5, Some(6)),
    ];
    assert_pass(live_nodes(&room(), &timeline(), &deaths, secs(60), secs(5)));
}

#[test]
fn live_nodes_fails_when_a_dead_node_stays_listed() {
    let late = [death("b", 4, None)];
    let e = evidence(live_nodes(&room(), &timeline(), &late, secs(60), secs(5)));
    assert_has(&e, "room-1: b died at 4.0s, listed 8.0s after in #0");
    let never = [death("a", 40, None)];
    let stuck = vec![(secs(0), put("a", 1, &["a"]))];
    let e = evidence(live_nodes(&room(), &stuck, &never, secs(60), secs(5)));
    assert_has(&e, "listed 20.0s after in #0 (still listed when last read)");
}

fn reception(first: &[(&str, &str, u64)]) -> RoomReception {
    RoomReception {
        room: room(),
        participants: vec![user("alice"), user("bob"), user("carol")],
        first_packet: first
            .iter()
            .map(|&(receiver, publisher, ms)| {
                let link = Link {
                    receiver: user(receiver),
                    publisher: user(publisher),
                };
                (link, Duration::from_millis(ms))
            })
            .collect(),
    }
}

const ALL_LINKS: [(&str, &str, u64); 6] = [
    ("alice", "bob", 100),
    ("alice", "carol", 200),
    ("bob", "alice", 300),
    ("bob", "carol", 400),
    ("carol", "alice", 500),
    ("carol", "bob", 4_000),
];

#[test]
fn everyone_receives_holds_when_every_link_recovers_in_time() {
    assert_pass(everyone_receives(&[reception(&ALL_LINKS)], secs(5)));
}

#[test]
fn everyone_receives_fails_on_a_track_never_received_or_late() {
    let e = evidence(everyone_receives(&[reception(&ALL_LINKS[1..])], secs(5)));
    assert_has(&e, "room-1: alice ← bob never");
    let e = evidence(everyone_receives(&[reception(&ALL_LINKS)], secs(3)));
    assert_has(&e, "room-1: carol ← bob after 4.0s, 1.0s late");
    let alone = RoomReception {
        participants: vec![user("alice")],
        ..reception(&[])
    };
    assert_nothing_to_check(everyone_receives(&[alone], secs(5)));
}

#[test]
fn recovery_times_summarize_the_links_that_recovered() {
    let t = recovery_times(&[reception(&ALL_LINKS[1..])]);
    assert_eq!((t.links, t.never), (6, 1));
    assert_eq!(t.p50, Some(Duration::from_millis(400)));
    assert_eq!(t.p99, Some(secs(4)));
    assert_eq!(t.max, Some(secs(4)));
    let json = serde_json::to_value(t).unwrap();
    assert_eq!(json["p50_ms"], 400.0);
}

/// A snapshot as `/debug/snapshot` renders it, with fields the checkers do not read.
fn snapshot(id: &str, members: &[&str], peers: i64) -> NodeSnapshot {
    let members: Vec<_> = members
        .iter()
        .map(|m| serde_json::json!({"id": m, "name": null}))
        .collect();
    NodeSnapshot::parse(&serde_json::json!({
        "node": id,
        "region": "eu",
        "counters": {
            "rooms": 0, "room_watches": 0, "peers": peers, "transports": 0, "tracks": 0, "downtracks": 0,
            "forwarding_tasks": 0, "sessions": 0, "packets_in": 17, "relay_link_failures": 1,
        },
        "router": {},
        "rooms": [{"id": "room-1", "members": members, "tracks": [], "remote": [], "links": []}],
    }))
    .unwrap()
}

fn connected(users: &[&str]) -> BTreeMap<RoomId, BTreeSet<UserId>> {
    BTreeMap::from([(room(), users.iter().map(|u| user(u)).collect())])
}

#[test]
fn exact_membership_holds_over_the_union_of_nodes() {
    let nodes = [snapshot("n1", &["alice"], 0), snapshot("n2", &["bob"], 0)];
    assert_pass(exact_membership(&connected(&["alice", "bob"]), &nodes));
}

#[test]
fn exact_membership_fails_on_missing_extra_and_duplicated_members() {
    let nodes = [
        snapshot("n1", &["alice", "dave"], 0),
        snapshot("n2", &["alice"], 0),
    ];
    let e = evidence(exact_membership(&connected(&["alice", "carol"]), &nodes));
    assert_has(&e, "room-1: missing carol (connected, on no node)");
    assert_has(&e, "room-1: extra dave on n1 (not connected)");
    assert_has(&e, "room-1: alice duplicated on n1, n2");
    assert_nothing_to_check(exact_membership(&connected(&[]), &[]));
}

fn bystander(name: &str, kept_socket: bool, kept_media: bool) -> Bystander {
    Bystander {
        client: user(name),
        kept_socket,
        kept_media,
    }
}

fn hostile(errors: usize, close_code: Option<u16>) -> HostileOutcome {
    HostileOutcome {
        client: "mallory".into(),
        errors,
        close_code,
    }
}

#[test]
fn bad_input_contained_holds_on_an_error_or_a_policy_close() {
    let others = [bystander("alice", true, true)];
    assert_pass(bad_input_contained(&[hostile(0, Some(1008))], &others));
    assert_pass(bad_input_contained(&[hostile(2, None)], &others));
}

#[test]
fn bad_input_contained_fails_on_silence_or_a_harmed_bystander() {
    let ok = [bystander("alice", true, true)];
    let e = evidence(bad_input_contained(&[hostile(0, Some(1011))], &ok));
    assert_has(&e, "hostile mallory: no error message and close 1011");
    let e = evidence(bad_input_contained(&[hostile(0, None)], &ok));
    assert_has(&e, "no error message and no close code");
    let harmed = [
        bystander("alice", false, true),
        bystander("bob", true, false),
    ];
    let e = evidence(bad_input_contained(&[hostile(1, Some(1008))], &harmed));
    assert_has(&e, "alice lost its socket");
    assert_has(&e, "bob lost media");
    assert_nothing_to_check(bad_input_contained(&[], &ok));
}

fn memory(baseline_kib: u64, after_kib: u64) -> MemoryReturn {
    MemoryReturn {
        process: "n1".into(),
        baseline_kib,
        after_kib,
    }
}

#[test]
fn nothing_leaks_holds_at_zero_and_near_the_baseline() {
    let tolerance = MemoryTolerance::default();
    let nodes = [snapshot("n1", &[], 0)];
    assert_pass(nothing_leaks(
        &nodes,
        &[memory(83 * 1024, 140 * 1024)],
        tolerance,
    ));
}

#[test]
fn nothing_leaks_fails_on_a_leaked_peer_or_memory_not_returned() {
    let tolerance = MemoryTolerance::default();
    let nodes = [snapshot("n1", &[], 1)];
    let e = evidence(nothing_leaks(
        &nodes,
        &[memory(83 * 1024, 741 * 1024)],
        tolerance,
    ));
    assert_has(&e, "n1: peers 1 after everyone left");
    assert_has(
        &e,
        "n1: RSS 741.0 MiB after, baseline 83.0 MiB (limit 156.5 MiB)",
    );
    let mut renamed = snapshot("n1", &[], 0);
    renamed.counters.remove("sessions");
    let e = evidence(nothing_leaks(&[renamed], &[memory(1, 1)], tolerance));
    assert_has(&e, "n1: sessions missing after everyone left");
    assert_nothing_to_check(nothing_leaks(&nodes, &[], tolerance));
}

fn log(text: &str) -> Log {
    Log {
        process: "node-1".into(),
        text: text.into(),
    }
}

#[test]
fn no_panic_holds_on_warnings_and_allowed_errors() {
    let text = "2025-11-30T10:00:00Z  INFO node: joined\n\
                2025-11-30T10:00:01Z  WARN node: relay link failed\n\
                2025-11-30T10:00:02Z ERROR node: nats connection lost";
    assert_pass(no_panic(&[log(text)], &["nats connection lost"]));
}

#[test]
fn no_panic_fails_on_a_panic_or_an_unexpected_error() {
    let text = "\u{1b}[31m2025-11-30T10:00:00Z ERROR\u{1b}[0m node: cannot subscribe\n\
                thread 'media-3' panicked at node/src/peer.rs:10:5:\n\
                {\"level\":\"ERROR\",\"fields\":{\"message\":\"encode\"}}";
    let e = evidence(no_panic(&[log(text)], &[]));
    assert_has(
        &e,
        "node-1: panic: thread 'media-3' panicked at node/src/peer.rs",
    );
    assert_has(
        &e,
        "node-1: ERROR: 2025-11-30T10:00:00Z ERROR node: cannot subscribe",
    );
    assert_has(&e, "\"level\":\"ERROR\"");
    assert_nothing_to_check(no_panic(&[], &[]));
}

fn rss(samples: &[(u64, u64)]) -> RssSeries {
    RssSeries {
        process: "node-1".into(),
        samples: samples
            .iter()
            .map(|&(s, mib)| (secs(s), mib * 1024))
            .collect(),
    }
}

#[test]
fn memory_bounded_holds_under_the_cap() {
    assert_pass(memory_bounded(
        &[rss(&[(0, 83), (10, 190), (20, 120)])],
        256 * 1024,
    ));
}

#[test]
fn memory_bounded_fails_on_a_spike_and_on_no_samples() {
    let spike = rss(&[(0, 83), (10, 300), (20, 741), (30, 400)]);
    let e = evidence(memory_bounded(&[spike], 256 * 1024));
    assert_has(
        &e,
        "node-1: peak 741.0 MiB at 20.0s over the cap 256.0 MiB (first over at 10.0s)",
    );
    assert_nothing_to_check(memory_bounded(&[rss(&[])], 256 * 1024));
}
