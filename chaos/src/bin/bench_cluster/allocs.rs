//! Part 2: allocations.

use super::*;

pub(super) struct AllocResults {
    pub(super) requests: usize,
    pub(super) inflight: usize,
    pub(super) secs: f64,
    pub(super) ok: usize,
    pub(super) errors: BTreeMap<String, usize>,
    /// Sorted latencies of successful requests.
    pub(super) lat: Vec<Duration>,
    pub(super) per_node: BTreeMap<String, usize>,
    pub(super) coord: CoordCounters,
    pub(super) cpu: CpuUse,
}

/// Coordinator counters summed over both coordinators (a delta once subtracted).
#[derive(Debug, Default, Clone, Copy)]
pub(super) struct CoordCounters {
    pub(super) created: f64,
    pub(super) existing: f64,
    /// Records decided from a coordinator's mirror of the directory, and read from KV.
    pub(super) mirror_reads: f64,
    pub(super) kv_reads: f64,
    pub(super) conflicts: f64,
}

impl CoordCounters {
    pub(super) async fn fetch(cluster: &Cluster) -> Result<CoordCounters> {
        let mut c = CoordCounters::default();
        for p in cluster.coordinators() {
            let text = p.http_get("/metrics").await?;
            let get =
                |name: &str, label: Option<&str>| bench::metric(&text, name, label).unwrap_or(0.0);
            c.created += get("coord_allocations_total", Some("result=\"created\""));
            c.existing += get("coord_allocations_total", Some("result=\"existing\""));
            c.mirror_reads += get("coord_directory_reads_total", Some("source=\"mirror\""));
            c.kv_reads += get("coord_directory_reads_total", Some("source=\"kv\""));
            c.conflicts += get("coord_directory_conflicts_total", None);
        }
        Ok(c)
    }

    pub(super) fn minus(self, o: CoordCounters) -> CoordCounters {
        CoordCounters {
            created: self.created - o.created,
            existing: self.existing - o.existing,
            mirror_reads: self.mirror_reads - o.mirror_reads,
            kv_reads: self.kv_reads - o.kv_reads,
            conflicts: self.conflicts - o.conflicts,
        }
    }
}

pub(super) enum AllocOutcome {
    Assigned(String),
    Failed(String),
}

pub(super) async fn allocate_once(
    client: &async_nats::Client,
    room: &str,
    from: &NodeId,
) -> AllocOutcome {
    let req = match RoomId::new(room) {
        Ok(room) => AllocateRequest {
            v: wire::VERSION,
            room,
            region: None,
            from: from.clone(),
            forwarded: false,
            lookup: false,
            full: Vec::new(),
            suspects: Vec::new(),
            settings: None,
        },
        Err(e) => return AllocOutcome::Failed(format!("room id: {e}")),
    };
    let payload = match serde_json::to_vec(&req) {
        Ok(p) => p,
        Err(e) => return AllocOutcome::Failed(format!("encode: {e}")),
    };
    let request = async_nats::Request::new()
        .payload(payload.into())
        .timeout(Some(Duration::from_secs(5)));
    match client.send_request(wire::ALLOCATE, request).await {
        Ok(m) => match serde_json::from_slice::<AllocateReply>(&m.payload) {
            Ok(AllocateReply::Assigned { serve, .. }) => AllocOutcome::Assigned(serve.to_string()),
            Ok(AllocateReply::Error { code, message, .. }) => {
                AllocOutcome::Failed(format!("{} ({message})", code.as_str()))
            }
            Err(_) => AllocOutcome::Failed("undecodable reply".into()),
        },
        Err(e) => AllocOutcome::Failed(format!("{:?}", e.kind()).to_lowercase()),
    }
}

pub(super) async fn bench_allocs(
    args: &Args,
    cluster: &Cluster,
    run_id: &str,
) -> Result<AllocResults> {
    let client = chaos::sandbox::nats_options(cluster.nats_url())
        .name("bench_cluster")
        .connection_timeout(Duration::from_secs(5))
        .connect(cluster.nats_url().split(',').collect::<Vec<_>>())
        .await
        .context("connecting to nats")?;
    let from = NodeId::new("n1")?;
    let run = |label: &'static str, n: usize| {
        let client = client.clone();
        let from = from.clone();
        let inflight = args.alloc_inflight;
        async move {
            let t0 = Instant::now();
            let outcomes: Vec<(Duration, AllocOutcome)> = futures::stream::iter(0..n)
                .map(|i| {
                    let client = client.clone();
                    let from = from.clone();
                    async move {
                        let room = format!("ba-{run_id}-{label}-{i}");
                        let t = Instant::now();
                        let o = allocate_once(&client, &room, &from).await;
                        (t.elapsed(), o)
                    }
                })
                .buffer_unordered(inflight)
                .collect()
                .await;
            (t0.elapsed(), outcomes)
        }
    };
    // Bounded: every request times out after 5 s; the whole run by this.
    let bound =
        |n: usize| Duration::from_secs(60 + (n as u64 * 5).div_ceil(args.alloc_inflight as u64));
    if args.alloc_warmup > 0 {
        let (_, w) = tokio::time::timeout(bound(args.alloc_warmup), run("w", args.alloc_warmup))
            .await
            .map_err(|_| anyhow!("warm-up allocations exceeded their time bound"))?;
        let bad = w
            .iter()
            .filter(|(_, o)| matches!(o, AllocOutcome::Failed(_)))
            .count();
        eprintln!("   warm-up: {} requests, {bad} failed", w.len());
    }
    let c0 = CoordCounters::fetch(cluster).await?;
    let cpu0 = cluster.cpu_snapshot();
    let (elapsed, outcomes) = tokio::time::timeout(bound(args.allocs), run("m", args.allocs))
        .await
        .map_err(|_| anyhow!("allocations exceeded their time bound"))?;
    let cpu = CpuUse::between(&cpu0, &cluster.cpu_snapshot());
    // Counters are updated after the reply is sent; give them a moment.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let coord = CoordCounters::fetch(cluster).await?.minus(c0);
    let mut lat = Vec::new();
    let mut errors: BTreeMap<String, usize> = BTreeMap::new();
    let mut per_node: BTreeMap<String, usize> = BTreeMap::new();
    for (d, o) in outcomes {
        match o {
            AllocOutcome::Assigned(node) => {
                lat.push(d);
                *per_node.entry(node).or_default() += 1;
            }
            AllocOutcome::Failed(why) => *errors.entry(why).or_default() += 1,
        }
    }
    lat.sort();
    Ok(AllocResults {
        requests: args.allocs,
        inflight: args.alloc_inflight,
        secs: elapsed.as_secs_f64(),
        ok: lat.len(),
        errors,
        lat,
        per_node,
        coord,
        cpu,
    })
}
