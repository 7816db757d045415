//! Part 1: join latency.

use super::*;

/// One measured join, every time from the start of the WebSocket connect.
#[derive(Debug, Clone, Copy)]
pub(super) struct JoinSample {
    pub(super) open: Duration,
    pub(super) joined: Duration,
    pub(super) offer: Duration,
    pub(super) media: Duration,
}

#[derive(Debug, Default)]
pub(super) struct JoinCase {
    pub(super) samples: Vec<JoinSample>,
    pub(super) failures: Vec<String>,
    /// Joins per node the joiners connected to.
    pub(super) via: BTreeMap<String, usize>,
}

impl JoinCase {
    pub(super) fn sorted(&self, f: impl Fn(&JoinSample) -> Duration) -> Vec<Duration> {
        let mut v: Vec<Duration> = self.samples.iter().map(f).collect();
        v.sort();
        v
    }

    pub(super) fn pct(&self, p: f64, f: impl Fn(&JoinSample) -> Duration) -> f64 {
        percentile_sorted(&self.sorted(f), p).map_or(f64::NAN, ms)
    }
}

/// The joins measured with one client ICE pacing.
pub(super) struct JoinRun {
    /// The joiners' ICE check interval, ms; 0 = webrtc-rs's default (200 ms).
    pub(super) ice_ms: u64,
    pub(super) same: JoinCase,
    pub(super) other: JoinCase,
    pub(super) cpu: CpuUse,
}

impl JoinRun {
    pub(super) fn client_label(&self) -> String {
        if self.ice_ms == 0 {
            "client ICE checks every 200 ms (webrtc-rs default)".into()
        } else {
            format!("client ICE checks every {} ms", self.ice_ms)
        }
    }
}

pub(super) struct JoinResults {
    pub(super) host: String,
    pub(super) publisher_via: String,
    pub(super) runs: Vec<JoinRun>,
}

pub(super) async fn bench_joins(
    args: &Args,
    cluster: &Cluster,
    run_id: &str,
) -> Result<JoinResults> {
    let room = format!("bj-{run_id}");
    let entry = cluster.node("n1")?;
    let publisher = Client::connect(&entry.ws_url())
        .await
        .context("publisher connect")?;
    let result = joins_with_publisher(args, cluster, &room, &publisher, entry.id()).await;
    leave(&publisher).await;
    result
}

pub(super) async fn joins_with_publisher(
    args: &Args,
    cluster: &Cluster,
    room: &str,
    publisher: &Client,
    publisher_via: &str,
) -> Result<JoinResults> {
    let joined = publisher
        .join(room, &token(room, "publisher")?)
        .await
        .context("publisher join")?;
    let host = joined.node.to_string();
    let host_proc = cluster
        .node(&host)
        .with_context(|| format!("joined names node {host}, which is not ours"))?;
    let others: Vec<&Proc> = cluster.nodes().filter(|p| p.id() != host).collect();
    eprintln!(
        "   room {room} is hosted on {host}; publisher connected via {publisher_via}; other-node joiners use {}",
        others.iter().map(|p| p.id()).collect::<Vec<_>>().join(" and ")
    );
    let publisher_id = joined.participant.id.to_string();
    publisher
        .publish(PublishOpts::default())
        .await
        .context("publisher publish")?;
    // Let the publisher's media reach the node before the first joiner.
    tokio::time::sleep(Duration::from_millis(500)).await;

    let mut runs = Vec::new();
    for &ice_ms in &args.join_client_ice_ms {
        eprintln!(
            "   joiners' ICE check interval: {}",
            if ice_ms == 0 {
                "webrtc-rs default (200 ms)".to_string()
            } else {
                format!("{ice_ms} ms")
            }
        );
        let config = ClientConfig {
            ice_check_interval: (ice_ms > 0).then(|| Duration::from_millis(ice_ms)),
            ..ClientConfig::default()
        };
        let run = join_run(
            args,
            cluster,
            room,
            &publisher_id,
            &host,
            host_proc,
            &others,
            &config,
            ice_ms,
        )
        .await?;
        runs.push(run);
    }
    Ok(JoinResults {
        host,
        publisher_via: publisher_via.to_owned(),
        runs,
    })
}

/// Joins alternately through the room's node and through the others, `join_warmup + joins`
/// of each.
#[allow(clippy::too_many_arguments)]
pub(super) async fn join_run(
    args: &Args,
    cluster: &Cluster,
    room: &str,
    publisher_id: &str,
    host: &str,
    host_proc: &Proc,
    others: &[&Proc],
    config: &ClientConfig,
    ice_ms: u64,
) -> Result<JoinRun> {
    let mut same = JoinCase::default();
    let mut other = JoinCase::default();
    let per_case = args.join_warmup + args.joins;
    let cpu0 = cluster.cpu_snapshot();
    // Bounded: each join is bounded (connect 10 s + join 10 s + offer 10 s + media 10 s +
    // leave 5 s), and the whole part by this deadline.
    let deadline = Instant::now() + Duration::from_secs(60 + 5 * per_case as u64);
    let mut consecutive_failures = 0usize;
    for i in 0..2 * per_case {
        if Instant::now() >= deadline {
            bail!("join part exceeded its time bound after {i} joins");
        }
        let is_same = i % 2 == 0;
        let k = i / 2;
        let via = if is_same {
            host_proc
        } else {
            others[k % others.len()]
        };
        let user = format!("j{ice_ms}{}-{k:04}", if is_same { "s" } else { "o" });
        let outcome = join_once(&via.ws_url(), config, room, &user, publisher_id, host).await;
        let case = if is_same { &mut same } else { &mut other };
        let measured = k >= args.join_warmup;
        match outcome {
            Ok(s) => {
                consecutive_failures = 0;
                if measured {
                    case.samples.push(s);
                    *case.via.entry(via.id().to_owned()).or_default() += 1;
                }
            }
            Err(e) => {
                consecutive_failures += 1;
                let msg = format!("{user} via {}: {e:#}", via.id());
                eprintln!("   join failed: {msg}");
                case.failures.push(msg);
                if consecutive_failures >= 10 {
                    bail!("10 joins in a row failed; last: {e:#}");
                }
            }
        }
        if (i + 1) % 40 == 0 {
            eprintln!("   {} / {} joins", i + 1, 2 * per_case);
        }
        tokio::time::sleep(Duration::from_millis(args.join_gap_ms)).await;
    }
    let cpu = CpuUse::between(&cpu0, &cluster.cpu_snapshot());
    Ok(JoinRun {
        ice_ms,
        same,
        other,
        cpu,
    })
}

/// Connects, joins (subscribe side automatic), waits for the first `subscribe_offer` and the
/// first synthetic packet from `publisher`, then leaves.
pub(super) async fn join_once(
    ws: &str,
    config: &ClientConfig,
    room: &str,
    user: &str,
    publisher: &str,
    host: &str,
) -> Result<JoinSample> {
    let tok = token(room, user)?;
    let t0 = Instant::now();
    let c = Client::connect_with(ws, config.clone())
        .await
        .context("connect")?;
    let open = t0.elapsed();
    let r = async {
        // The joiner says the host's region, so it is served by the host whichever node its
        // socket reached (a client is served in its own region otherwise).
        let region = NODES
            .iter()
            .find(|(id, _)| *id == host)
            .map_or("eu", |(_, r)| *r);
        let j = c.join_in_region(room, &tok, region).await.context("join")?;
        let joined = t0.elapsed();
        if j.node.as_str() != host {
            bail!("joined names node {} instead of {host}", j.node);
        }
        c.wait_for(Duration::from_secs(10), |m| {
            matches!(m, ServerMessage::SubscribeOffer { .. })
        })
        .await
        .context("subscribe_offer")?;
        let offer = t0.elapsed();
        let limit = Instant::now() + Duration::from_secs(10);
        while c.received_from(publisher) == 0 {
            if Instant::now() >= limit {
                bail!(
                    "no packet from the publisher within 10 s of the offer (local errors: {:?})",
                    c.local_errors()
                );
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let media = t0.elapsed();
        Ok(JoinSample {
            open,
            joined,
            offer,
            media,
        })
    }
    .await;
    leave(&c).await;
    r
}
