//! `chaos load` against a real cluster (nats-server, two coordinators, two nodes in two
//! regions, so every room spans both nodes): the command runs as a child process (as
//! `chaos-load`, the same command built with the tests, see `tests/src/bin/chaos-load.rs`),
//! what its JSON summary says was sent and received agrees with the nodes' own counters,
//! and Ctrl-C (SIGINT) ends a run early with its summary.
//!
//! Like with like: a node counts as received (`sfu_packets_received_total`) both what its
//! publishers send and what arrives over a relay link from the other node, and as forwarded
//! (`sfu_packets_forwarded_total`) both what it writes to its subscribers and what it sends
//! over relay links (`sfu_relay_packets_sent_total`); duplicates it drops (retransmissions
//! whose original arrived) are counted apart, and its own retransmissions to subscribers
//! are not forwards. So, over both nodes:
//!
//! - packets from the publishers = received − relay sent − duplicates dropped, against the
//!   packets the tool's publishers sent;
//! - packets to the subscribers = forwarded − relay sent, against the distinct packets the
//!   tool's subscribers received.
//!
//! RTCP never enters either counter. The node adds to its totals in batches of 64 packets
//! per track and the rest when a track ends, so the second reading waits until both nodes
//! have no track, connection or forwarding task left.

use anyhow::Context;
use chaos::bench::metric;
use chaos::wait_until;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;
use tests::procs::{ProcSpec, Procs};

const NODE: &str = env!("CARGO_BIN_EXE_cluster-node");
const COORDINATOR: &str = env!("CARGO_BIN_EXE_cluster-coordinator");
const LOAD: &str = env!("CARGO_BIN_EXE_chaos-load");

/// Bound on the whole `chaos load` run: 10 s of media, joins and the orderly end.
const RUN_BOUND: Duration = Duration::from_secs(120);
const IDLE_BOUND: Duration = Duration::from_secs(60);

/// The counters of one node that the comparison needs.
#[derive(Debug, Clone, Copy, Default)]
struct NodeCounts {
    received: f64,
    forwarded: f64,
    relay_sent: f64,
    duplicates: f64,
    retransmitted: f64,
}

impl NodeCounts {
    fn since(&self, before: &NodeCounts) -> NodeCounts {
        NodeCounts {
            received: self.received - before.received,
            forwarded: self.forwarded - before.forwarded,
            relay_sent: self.relay_sent - before.relay_sent,
            duplicates: self.duplicates - before.duplicates,
            retransmitted: self.retransmitted - before.retransmitted,
        }
    }

    fn add(&mut self, o: &NodeCounts) {
        self.received += o.received;
        self.forwarded += o.forwarded;
        self.relay_sent += o.relay_sent;
        self.duplicates += o.duplicates;
        self.retransmitted += o.retransmitted;
    }
}

async fn scrape(procs: &Procs, node: &str) -> anyhow::Result<(NodeCounts, String)> {
    let text = procs.cluster.node(node)?.http_get("/metrics").await?;
    let get = |name: &str, label: Option<&str>| {
        metric(&text, name, label).with_context(|| format!("{name} missing from {node}'s /metrics"))
    };
    let counts = NodeCounts {
        received: get("sfu_packets_received_total", None)?,
        forwarded: get("sfu_packets_forwarded_total", None)?,
        relay_sent: get("sfu_relay_packets_sent_total", None)?,
        duplicates: get("sfu_packets_dropped_total", Some("reason=\"duplicate\""))?,
        retransmitted: get("sfu_packets_retransmitted_total", None)?,
    };
    Ok((counts, text))
}

/// Waits until a node serves nothing: every track ended has added its last counts.
async fn wait_idle(procs: &Procs, node: &str) -> anyhow::Result<()> {
    wait_until(IDLE_BOUND, &format!("{node} to serve nothing"), || async {
        let (_, text) = scrape(procs, node).await.map_err(|e| format!("{e:#}"))?;
        let busy: Vec<String> = [
            "sfu_peers",
            "sfu_transports",
            "sfu_tracks",
            "sfu_forwarding_tasks",
        ]
        .into_iter()
        .filter_map(|g| {
            let v = metric(&text, g, None).unwrap_or(-1.0);
            (v != 0.0).then(|| format!("{g} {v}"))
        })
        .collect();
        if busy.is_empty() {
            Ok(())
        } else {
            Err(busy.join(", "))
        }
    })
    .await
}

fn within(what: &str, tool: f64, node: f64, tolerance: f64) {
    let off = (tool - node).abs() / node.max(1.0);
    eprintln!(
        "   {what}: tool {tool}, nodes {node} ({:.3} % apart)",
        off * 100.0
    );
    assert!(
        off <= tolerance,
        "{what}: the tool says {tool}, the nodes {node}: {:.2} % apart",
        off * 100.0
    );
}

/// `chaos-load` against both nodes, writing its JSON summary to a fresh file.
fn load_command(
    procs: &Procs,
    nodes: &[&str],
    args: &[&str],
) -> (tokio::process::Command, PathBuf) {
    let json = std::env::temp_dir().join(format!("load-{:016x}.json", rand::random::<u64>()));
    let mut cmd = tokio::process::Command::new(LOAD);
    for n in nodes {
        cmd.args(["--url", &procs.ws_url(n)]);
    }
    cmd.args(args)
        .args(["--api-secret", procs.secret()])
        .arg("--json")
        .arg(&json)
        .env(
            "RUST_LOG",
            "warn,rtc=error,rtc_ice=error,rtc_dtls=error,webrtc=error",
        )
        .stdin(Stdio::null())
        .kill_on_drop(true);
    (cmd, json)
}

fn read_summary(json: &Path) -> anyhow::Result<serde_json::Value> {
    let text = std::fs::read_to_string(json).context("the JSON summary")?;
    let _ = std::fs::remove_file(json);
    Ok(serde_json::from_str(&text)?)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn load_reports_what_the_nodes_count() -> anyhow::Result<()> {
    let spec = ProcSpec::new(NODE, COORDINATOR, &[("n1", "eu"), ("n2", "us")])
        .node_flag("--room-empty-grace-secs=1");
    let procs = Procs::start(spec).await?;
    let nodes = ["n1", "n2"];
    let mut before = Vec::new();
    for n in nodes {
        before.push(scrape(&procs, n).await?.0);
    }

    let (mut cmd, json) = load_command(
        &procs,
        &nodes,
        &[
            "--rooms",
            "2",
            "--publishers",
            "2",
            "--subscribers",
            "3",
            "--audio",
            "--video",
            "--video-kbps",
            "500",
            "--duration",
            "10s",
            "--join-rate",
            "5",
        ],
    );
    let status = tokio::time::timeout(RUN_BOUND, cmd.status())
        .await
        .context("chaos load ran past its bound")??;
    assert!(status.success(), "chaos load failed: {status}");
    let summary = read_summary(&json)?;

    // Everyone joined and stayed, on both nodes, and every track reached every subscriber.
    assert_eq!(summary["joins"]["ok"], 10, "{summary:#}");
    assert_eq!(summary["joins"]["failed"], 0, "{summary:#}");
    assert_eq!(summary["joins"]["dropped"], 0, "{summary:#}");
    assert_eq!(summary["nodes"]["n1"], 5, "{summary:#}");
    assert_eq!(summary["nodes"]["n2"], 5, "{summary:#}");
    assert_eq!(summary["tracks"]["published"], 8, "{summary:#}");
    assert_eq!(summary["tracks"]["subscribed"], 24, "{summary:#}");
    assert_eq!(summary["interrupted"], false, "{summary:#}");
    assert!(
        summary["join_time_ms"]["p99"].as_f64().is_some(),
        "{summary:#}"
    );
    assert!(
        summary["latency_ms"]["p50"].as_f64().is_some(),
        "{summary:#}"
    );
    assert!(
        summary["loss"]["percent"].as_f64().unwrap_or(100.0) < 2.0,
        "{summary:#}"
    );
    let sent = summary["sent"]["packets"].as_f64().unwrap_or(0.0);
    let received = summary["received"]["packets"].as_f64().unwrap_or(0.0)
        - summary["loss"]["duplicates"].as_f64().unwrap_or(0.0);
    // Four publishers for about 10 s at 52 video and 50 audio packets a second.
    assert!(sent > 2000.0, "{summary:#}");
    assert!(received > 2.0 * sent, "{summary:#}");

    let mut delta = NodeCounts::default();
    for (n, b) in nodes.iter().zip(&before) {
        wait_idle(&procs, n).await?;
        let (after, _) = scrape(&procs, n).await?;
        let d = after.since(b);
        eprintln!("   {n}: {d:?}");
        delta.add(&d);
    }
    // The rooms spanned both nodes: media crossed relay links.
    assert!(delta.relay_sent > 0.0, "{delta:?}");
    within(
        "packets from the publishers",
        sent,
        delta.received - delta.relay_sent - delta.duplicates,
        0.02,
    );
    within(
        "packets to the subscribers",
        received,
        delta.forwarded - delta.relay_sent,
        0.02,
    );

    // Ctrl-C ends a long run early, with its summary, and everyone leaves.
    let (mut cmd, json) = load_command(
        &procs,
        &nodes,
        &[
            "--publishers",
            "1",
            "--subscribers",
            "1",
            "--audio",
            "--duration",
            "10m",
        ],
    );
    let mut child = cmd.spawn()?;
    // The publisher on n1, the subscriber on n2: the track is on both once both are in.
    wait_until(IDLE_BOUND, "the track on both nodes", || async {
        let mut tracks = 0.0;
        for n in nodes {
            let (_, text) = scrape(&procs, n).await.map_err(|e| format!("{e:#}"))?;
            tracks += metric(&text, "sfu_tracks", None).unwrap_or(0.0);
        }
        (tracks >= 2.0)
            .then_some(())
            .ok_or(format!("{tracks} tracks"))
    })
    .await?;
    let pid = child.id().context("the child's pid")?;
    let killed = std::process::Command::new("kill")
        .args(["-INT", &pid.to_string()])
        .status()?;
    assert!(killed.success());
    let status = tokio::time::timeout(RUN_BOUND, child.wait())
        .await
        .context("chaos load did not end after ctrl-c")??;
    assert!(status.success(), "chaos load failed after ctrl-c: {status}");
    let summary = read_summary(&json)?;
    assert_eq!(summary["interrupted"], true, "{summary:#}");
    assert_eq!(summary["joins"]["ok"], 2, "{summary:#}");
    assert!(
        summary["elapsed_s"].as_f64().unwrap_or(600.0) < 300.0,
        "{summary:#}"
    );
    for n in nodes {
        wait_idle(&procs, n).await?;
    }
    Ok(())
}
