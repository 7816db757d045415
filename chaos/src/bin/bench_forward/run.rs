//! One run: a fresh node, a publisher and N subscribers, set up, measured, torn down.

use super::*;

pub(super) async fn run_one(
    args: &Args,
    facts: &MachineFacts,
    n: usize,
    load: Load,
) -> Result<RunResult> {
    let log = args.log_dir.join(format!("node-n{n}-{}.log", load.name()));
    let mut node = NodeProc::start(&args.node_bin, &log)?;
    let result = run_with_node(args, facts, n, load, &mut node).await;
    node.stop();
    result.with_context(|| format!("node log: {}", log.display()))
}

pub(super) async fn run_with_node(
    args: &Args,
    facts: &MachineFacts,
    n: usize,
    load: Load,
    node: &mut NodeProc,
) -> Result<RunResult> {
    let port = node.port;
    // Ready = /metrics answers. Bounded: 15 s.
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        if let Some(status) = node.exited() {
            bail!("node exited during startup ({status})");
        }
        if http_get(port, "/metrics").await.is_ok() {
            break;
        }
        if Instant::now() >= deadline {
            bail!("node did not answer /metrics on port {port} within 15 s");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let ws = format!("ws://127.0.0.1:{port}/ws");
    let room = format!("bench-{n}-{}-{:04x}", load.name(), rand::random::<u16>());
    let kinds = load.kinds();

    let publisher = Client::connect(&ws).await.context("publisher connect")?;
    publisher
        .join(&room, &token(&room, "publisher", true)?)
        .await
        .context("publisher join")?;
    let publisher_id = publisher
        .participant_id()
        .ok_or_else(|| anyhow!("publisher has no participant id"))?
        .to_string();
    publisher
        .publish(load.publish_opts(args))
        .await
        .context("publisher publish")?;
    // Exactly the load's tracks are published (so `video` has no audio track).
    let mut published: Vec<TrackKind> = publisher
        .sent_stats()
        .await
        .iter()
        .filter(|t| t.active)
        .map(|t| t.kind)
        .collect();
    published.sort_by_key(|k| *k == TrackKind::Audio);
    if published != kinds {
        bail!(
            "the publisher publishes {published:?}, the {} load wants {kinds:?}",
            load.name()
        );
    }

    // Subscribers, `concurrency` at a time; each counts as set up once it receives every
    // published track. The first failure stops the setup.
    let setup_started = Instant::now();
    let setup_timeout = Duration::from_secs(args.setup_timeout.unwrap_or(60 + n as u64));
    let mut subs: Vec<Client> = Vec::with_capacity(n);
    let setup = async {
        let mut stream = futures::stream::iter(0..n)
            .map(|i| setup_subscriber(&ws, &room, i, &publisher_id, kinds))
            .buffer_unordered(args.concurrency.max(1));
        while let Some(r) = stream.next().await {
            subs.push(r?);
            if subs.len().is_multiple_of(25) {
                eprintln!(
                    "   {} / {n} subscribers receive media ({:.1} s)",
                    subs.len(),
                    setup_started.elapsed().as_secs_f64()
                );
            }
        }
        anyhow::Ok(())
    };
    match tokio::time::timeout(setup_timeout, setup).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            let done = subs.len();
            leave_all(subs, args.concurrency).await;
            return Err(e.context(format!(
                "setting up subscribers: {done} of {n} were receiving media when one failed"
            )));
        }
        Err(_) => {
            let done = subs.len();
            leave_all(subs, args.concurrency).await;
            bail!(
                "setting up subscribers: only {done} of {n} received media within {} s",
                setup_timeout.as_secs()
            );
        }
    }
    let setup_secs = setup_started.elapsed().as_secs_f64();
    eprintln!("   all {n} subscribers receive media after {setup_secs:.1} s");

    // Steady: every subscriber got a packet of each published track within the last second.
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let now = chaos::payload::unix_now_us();
        let behind = subs
            .iter()
            .filter(|c| {
                let ts = tracks_of(c, &publisher_id);
                !receives_all(&ts, kinds)
                    || ts
                        .iter()
                        .any(|t| now.saturating_sub(t.last_packet_unix_us) > 1_000_000)
            })
            .count();
        if behind == 0 {
            break;
        }
        if Instant::now() >= deadline {
            leave_all(subs, args.concurrency).await;
            bail!("{behind} of {n} subscribers received nothing in the last second, for 15 s after setup");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    tokio::time::sleep(Duration::from_secs(args.settle)).await;
    // No subscriber sees a track of a kind that was not published.
    let strays = subs
        .iter()
        .filter(|c| {
            tracks_of(c, &publisher_id)
                .iter()
                .any(|t| !kinds.contains(&t.kind))
        })
        .count();
    if strays > 0 {
        leave_all(subs, args.concurrency).await;
        bail!(
            "{strays} of {n} subscribers receive a track the {} load does not publish",
            load.name()
        );
    }

    // The window, repeated (bounded) while other processes take much of the machine.
    let pid = node.pid();
    let attempts = args.attempts.max(1);
    let mut best: Option<Window> = None;
    for attempt in 1..=attempts {
        let w = measure_window(args, facts, node, &publisher, &publisher_id, &subs, kinds).await?;
        let other = w.other_cpu_pct(facts.nproc);
        eprintln!(
            "   window {attempt}/{attempts}: node {:.0} %, bench {:.0} %, other {other:.0} % of a core",
            w.node_cpu_pct(),
            w.bench_cpu_pct()
        );
        let better = best
            .as_ref()
            .is_none_or(|b| other < b.other_cpu_pct(facts.nproc));
        if better {
            best = Some(w);
        }
        if other <= args.max_other {
            break;
        }
    }
    let window = best.ok_or_else(|| anyhow!("no window measured"))?;

    let profile = match args.perf_seconds {
        Some(s) if s > 0 => match perf_profile(pid, s, &args.log_dir, n, load).await {
            Ok(p) => Some(p),
            Err(e) => Some(format!("perf failed: {e:#}")),
        },
        _ => None,
    };

    // Teardown: everyone leaves; the node should be back to zero peers.
    leave_all(subs, args.concurrency).await;
    let _ = tokio::time::timeout(Duration::from_secs(5), publisher.leave()).await;
    drop(publisher);
    let mut peers_after_leave = None;
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        peers_after_leave = Metrics::fetch(port).await.ok().map(|m| m.peers);
        if peers_after_leave == Some(0.0) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    Ok(RunResult {
        setup_secs,
        window,
        peers_after_leave,
        profile,
    })
}

pub(super) fn token(room: &str, user: &str, can_publish: bool) -> Result<String> {
    let now = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs();
    let mut claims = Claims::new(RoomId::new(room)?, UserId::new(user)?, now, 3600);
    claims.can_publish = can_publish;
    Ok(mint(API_SECRET, &claims))
}

pub(super) fn tracks_of(c: &Client, publisher: &str) -> Vec<TrackStats> {
    c.track_stats()
        .into_iter()
        .filter(|t| t.publisher == publisher)
        .collect()
}

/// Connects, joins subscribe-only and waits (30 s at most) until every published track
/// (`kinds`) arrives.
pub(super) async fn setup_subscriber(
    ws: &str,
    room: &str,
    i: usize,
    publisher: &str,
    kinds: &[TrackKind],
) -> Result<Client> {
    let user = format!("sub-{i:04}");
    let c = Client::connect(ws)
        .await
        .with_context(|| format!("{user}: connect"))?;
    c.join(room, &token(room, &user, false)?)
        .await
        .with_context(|| format!("{user}: join"))?;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let ts = tracks_of(&c, publisher);
        if receives_all(&ts, kinds) {
            return Ok(c);
        }
        if Instant::now() >= deadline {
            let errors = c.local_errors();
            bail!(
                "{user}: no media from every published track ({kinds:?}) within 30 s after joining (tracks: {}, local errors: {:?})",
                ts.iter()
                    .map(|t| format!("{:?} received {}", t.kind, t.received))
                    .collect::<Vec<_>>()
                    .join(", "),
                errors
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Every client leaves, `concurrency × 2` at a time, each bounded by 5 s, all by 120 s.
pub(super) async fn leave_all(subs: Vec<Client>, concurrency: usize) {
    let all = futures::stream::iter(subs)
        .map(|c| async move {
            let _ = tokio::time::timeout(Duration::from_secs(5), c.leave()).await;
        })
        .buffer_unordered(concurrency.max(1) * 2)
        .collect::<Vec<()>>();
    if tokio::time::timeout(Duration::from_secs(120), all)
        .await
        .is_err()
    {
        eprintln!("   leaving took more than 120 s; the rest are dropped");
    }
}
