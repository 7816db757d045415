use super::report::load_line;
use super::window::slope;
use super::*;

#[test]
fn slope_of_a_line() {
    let s: Vec<(f64, f64)> = (0..10).map(|i| (i as f64, 5.0 + 3.0 * i as f64)).collect();
    assert!((slope(&s) - 3.0).abs() < 1e-9);
}

fn args(extra: &[&str]) -> Args {
    Args::try_parse_from(std::iter::once("bench_forward").chain(extra.iter().copied())).unwrap()
}

/// A run of N subscribers: `pps` packets/s forwarded per subscriber over 10 s, with
/// `cpu_secs` of node CPU.
fn ok(n: usize, load: Load, pps: f64, cpu_secs: f64) -> Outcome {
    let mut lat = LatencyHistogram::default();
    lat.record(1_000);
    Outcome {
        n,
        load,
        result: Ok(RunResult {
            setup_secs: 1.0,
            window: Window {
                secs: 10.0,
                sent_pps: pps,
                forwarded_pps: pps * n as f64,
                delivered_pps: pps * n as f64,
                node_cpu_secs: cpu_secs,
                bench_cpu_secs: 0.5,
                machine_busy: 10.0,
                loss_pct: 0.0,
                stalled: 0,
                lat,
                rss_kib: 20 * 1024,
                dropped_congested: 0.0,
                dropped_write_error: 0.0,
            },
            peers_after_leave: Some(0.0),
            profile: None,
        }),
    }
}

#[test]
fn defaults_are_the_issue_benchmark() {
    let a = args(&[]);
    assert_eq!(a.subscribers, vec![50, 100, 200]);
    assert_eq!(a.load, LoadArg::Both);
    assert_eq!(a.load.loads(), &[Load::Video, Load::Mixed]);
    assert_eq!(a.video_payload, 1200);
    let a = args(&["--subscribers", "10", "--load", "video"]);
    assert_eq!(a.subscribers, vec![10]);
    assert_eq!(a.load.loads(), &[Load::Video]);
    assert_eq!(args(&["--load", "mixed"]).load.loads(), &[Load::Mixed]);
}

#[test]
fn video_load_publishes_only_video() {
    let a = args(&[]);
    let v = Load::Video.publish_opts(&a);
    assert!(v.video && !v.audio);
    assert_eq!(v.video_payload, 1200);
    let m = Load::Mixed.publish_opts(&a);
    assert!(m.video && m.audio);
    assert_eq!(Load::Video.kinds(), &[TrackKind::Video]);
}

fn track(kind: TrackKind, received: u64) -> TrackStats {
    TrackStats {
        publisher: "p".into(),
        track_id: format!("{kind:?}"),
        kind,
        received,
        lost: 0,
        duplicates: 0,
        foreign: 0,
        restarts: 0,
        in_flight: 0,
        in_flight_missing: 0,
        latency_p50_us: 0,
        latency_p99_us: 0,
        latency_max_us: 0,
        last_packet_unix_us: 0,
        ended: false,
    }
}

#[test]
fn a_video_only_subscriber_is_complete_without_audio() {
    let video = track(TrackKind::Video, 5);
    assert!(receives_all(
        std::slice::from_ref(&video),
        Load::Video.kinds()
    ));
    assert!(!receives_all(
        std::slice::from_ref(&video),
        Load::Mixed.kinds()
    ));
    let silent_audio = track(TrackKind::Audio, 0);
    assert!(!receives_all(&[video, silent_audio], Load::Mixed.kinds()));
}

#[test]
fn table_has_a_load_column_and_a_row_per_run() {
    let outcomes = vec![
        ok(50, Load::Video, 100.0, 5.0),
        ok(50, Load::Mixed, 150.0, 6.0),
        Outcome {
            n: 100,
            load: Load::Video,
            result: Err(anyhow!("boom | bang")),
        },
    ];
    let t = render_table(&outcomes, 2);
    let lines: Vec<&str> = t.lines().collect();
    assert_eq!(lines.len(), 5);
    assert!(lines[0].starts_with("| subscribers | load | setup s |"));
    assert!(lines[0].contains("node CPU µs per fwd pkt"));
    let cells = |l: &str| l.matches('|').count();
    for l in &lines {
        assert_eq!(cells(l), cells(lines[0]), "{l}");
    }
    // 5 CPU-s over 10 s × 5000 pkt/s = 50 000 packets: 100 µs per packet.
    assert!(lines[2].starts_with("| 50 | video | 1.0 | 100 | 5000 | 5000 | 50 | 100.00 |"));
    assert!(lines[3].starts_with("| 50 | mixed | 1.0 | 150 | 7500 | 7500 | 60 | 80.00 |"));
    assert!(lines[4].starts_with("| 100 | video | failed: boom / bang |"));
}

#[test]
fn headline_puts_the_loads_of_one_n_side_by_side() {
    let outcomes = vec![
        ok(50, Load::Video, 100.0, 5.0),
        ok(50, Load::Mixed, 150.0, 6.0),
        Outcome {
            n: 100,
            load: Load::Video,
            result: Err(anyhow!("boom")),
        },
        ok(100, Load::Mixed, 150.0, 12.0),
    ];
    let h = render_headline(&outcomes);
    let lines: Vec<&str> = h.lines().collect();
    assert_eq!(lines.len(), 3);
    assert!(lines[0].contains("µs"));
    assert_eq!(
        lines[1],
        "- N = 50: video 100.00 µs (loss 0.000 %), mixed 80.00 µs (loss 0.000 %)"
    );
    assert_eq!(
        lines[2],
        "- N = 100: video failed, mixed 80.00 µs (loss 0.000 %)"
    );
}

#[test]
fn load_line_describes_the_loads_run() {
    let both = load_line(&args(&[]));
    assert!(both.starts_with("- load (a row per N and load"));
    assert!(both.contains(
        "*video*: a video track only (no audio track), 100 pkt/s × 1200 B payload; \
*mixed*: video 100 pkt/s × 1200 B payload + audio 50 pkt/s × 160 B;"
    ));
    let video = load_line(&args(&["--load", "video"]));
    assert!(video.contains("*video*"));
    assert!(!video.contains("*mixed*"));
}
