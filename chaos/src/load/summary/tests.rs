use super::*;

fn config() -> LoadConfig {
    LoadConfig {
        urls: vec!["ws://a/ws".into(), "ws://b/ws".into()],
        rooms: 2,
        publishers: 2,
        subscribers: 3,
        audio: true,
        video: true,
        video_kbps: 1000,
        video_pps: 104,
        duration: Duration::from_secs(10),
        join_rate: 5.0,
        join_interval: Duration::from_millis(200),
        secret: "s".into(),
        room_base: "load-x".into(),
        bind_ip: [127, 0, 0, 1].into(),
    }
}

fn outcome(role: Role, node: &str, counts: Counts, secs: u64) -> Outcome {
    Outcome {
        role,
        node: node.into(),
        counts,
        active: Duration::from_secs(secs),
        tracks_published: if role == Role::Publisher { 2 } else { 0 },
        tracks_received: if role == Role::Subscriber { 4 } else { 0 },
        dropped: false,
    }
}

fn measured() -> Measured {
    let mut join_times = Histogram::<u64>::new(3).unwrap();
    for us in [40_000, 50_000, 60_000, 250_000] {
        join_times.record(us).unwrap();
    }
    let mut latency = LatencyHistogram::default();
    for us in [1_000, 2_000, 3_000] {
        latency.record(us);
    }
    let sent = Counts {
        sent_packets: 1000,
        sent_bytes: 1_000_000,
        ..Counts::default()
    };
    let got = Counts {
        received_packets: 1990,
        received_bytes: 2_000_000,
        lost: 10,
        duplicates: 0,
        ..Counts::default()
    };
    Measured {
        elapsed: Duration::from_secs(10),
        interrupted: false,
        attempted: 5,
        join_times,
        errors: BTreeMap::from([("join: timed out".to_owned(), 1)]),
        outcomes: vec![
            outcome(Role::Publisher, "n1", sent, 8),
            outcome(Role::Publisher, "n2", sent, 4),
            outcome(Role::Subscriber, "n1", got, 8),
            outcome(Role::Subscriber, "n2", got, 8),
        ],
        latency,
    }
}

#[test]
fn figures_add_up_per_participant_and_in_total() {
    let s = Summary::build(&config(), measured());
    assert_eq!(
        (
            s.joins.planned,
            s.joins.attempted,
            s.joins.ok,
            s.joins.failed
        ),
        (10, 5, 4, 1)
    );
    assert_eq!(
        s.nodes,
        BTreeMap::from([("n1".into(), 2), ("n2".into(), 2)])
    );
    // 1 MB in 8 s and in 4 s: 1 and 2 Mbit/s.
    assert_eq!(s.sent.participants, 2);
    assert_eq!(s.sent.packets, 2000);
    assert_eq!(s.sent.bitrate_bps, 3_000_000.0);
    assert_eq!(s.sent.bitrate_bps_per_participant, 1_500_000.0);
    assert_eq!(s.received.packets, 3980);
    assert_eq!(s.received.bitrate_bps, 4_000_000.0);
    assert_eq!(s.loss.lost, 20);
    assert!((s.loss.percent - 0.5).abs() < 1e-9, "{}", s.loss.percent);
    assert_eq!(
        (
            s.tracks.published,
            s.tracks.subscribed,
            s.tracks.expected_subscribed
        ),
        (4, 8, 24)
    );
    let join = s.join_time_ms.unwrap();
    assert_eq!(join.samples, 4);
    assert!((join.p50 - 50.0).abs() < 0.1, "{join:?}");
    assert!((join.max - 250.0).abs() < 0.5, "{join:?}");
    let latency = s.latency_ms.unwrap();
    assert_eq!(latency.samples, 3);
    assert!((latency.max - 3.0).abs() < 0.1, "{latency:?}");
}

#[test]
fn the_table_shows_every_figure() {
    let table = Summary::build(&config(), measured()).table();
    for want in [
        "2 room(s) × (2 publishers + 3 subscribers), audio+video (video 1000 kbit/s), 10.0 s over 2 URL(s)",
        "joins        4 ok, 1 failed, 0 dropped later (10 planned, 5 started)",
        "join time    p50 50.0 ms",
        "max 250.",
        "nodes        n1 2, n2 2",
        "tracks       4 published, 8 subscribed (24 expected)",
        "loss         0.500 % (20 lost, 0 duplicates)",
        "latency      p50 ",
        "error        1× join: timed out",
    ] {
        assert!(table.contains(want), "{want:?} missing from\n{table}");
    }
    let sent = table.lines().find(|l| l.starts_with("sent")).unwrap();
    let cells: Vec<&str> = sent.split_whitespace().collect();
    assert_eq!(
        cells,
        ["sent", "2", "2000", "3.00", "Mbit/s", "1.50", "Mbit/s"]
    );
}

#[test]
fn an_empty_run_renders_without_figures() {
    let m = Measured {
        attempted: 0,
        errors: BTreeMap::new(),
        outcomes: Vec::new(),
        join_times: Histogram::<u64>::new(3).unwrap(),
        latency: LatencyHistogram::default(),
        ..measured()
    };
    let s = Summary::build(&config(), m);
    assert_eq!(s.join_time_ms, None);
    assert_eq!(s.latency_ms, None);
    assert_eq!(s.sent.bitrate_bps_per_participant, 0.0);
    let table = s.table();
    assert!(table.contains("join time    -"), "{table}");
    assert!(table.contains("nodes        -"), "{table}");
}

#[test]
fn the_json_has_the_tables_figures() {
    let s = Summary::build(&config(), measured());
    let v: serde_json::Value = serde_json::to_value(&s).unwrap();
    assert_eq!(v["joins"]["ok"], 4);
    assert_eq!(v["sent"]["packets"], 2000);
    assert_eq!(v["received"]["packets"], 3980);
    assert_eq!(v["config"]["media"], "audio+video");
    assert_eq!(v["config"]["join_rate"], 5.0);
    assert_eq!(v["joins"]["errors"][0]["error"], "join: timed out");
    assert!(v["join_time_ms"]["p99"].as_f64().unwrap() > 200.0);
    assert!(v["latency_ms"]["p50"].is_number());
}

#[test]
fn the_progress_line_rewrites_itself_only_on_a_terminal() {
    let p = Progress {
        elapsed: Duration::from_millis(12_300),
        planned: 10,
        joined: 9,
        failed: 1,
        dropped: 0,
        publishers: 4,
        subscribers: 5,
        rates: Rates {
            send_bps: 4_200_000.0,
            receive_bps: 850_000.0,
            loss: 0.0012,
        },
    };
    let plain = p.render(false);
    assert_eq!(
        plain,
        "  12.3s  joined 9/10  failed 1  dropped 0  publishers 4  subscribers 5  \
         send 4.20 Mbit/s  recv 850.0 kbit/s  loss 0.12 %\n"
    );
    let tty = p.render(true);
    assert!(tty.starts_with('\r') && tty.ends_with("\x1b[K"), "{tty:?}");
    assert!(!tty.contains('\n'));
    assert_eq!(bitrate(2.5e9), "2.50 Gbit/s");
}
