//! Part 3: cross-node messages.

use super::*;

#[derive(Debug, Clone, Default)]
pub(super) struct StepRecv {
    pub(super) received: u64,
    pub(super) lat: LatencyHistogram,
    pub(super) out_of_order: u64,
    pub(super) last_n: Option<u64>,
}

#[derive(Default)]
pub(super) struct RecvState {
    pub(super) steps: Vec<StepRecv>,
    pub(super) closed: Option<String>,
}

pub(super) struct Pair {
    pub(super) sender: Arc<Client>,
    pub(super) receiver: Arc<Client>,
    pub(super) receiver_id: String,
    pub(super) sender_id: String,
    pub(super) host: String,
}

pub(super) struct MsgStep {
    pub(super) offered: u32,
    pub(super) secs: f64,
    pub(super) sent: u64,
    /// Received during the sending window.
    pub(super) delivered_in_window: u64,
    /// Received by the end of the drain.
    pub(super) delivered: u64,
    pub(super) lat: LatencyHistogram,
    pub(super) out_of_order: u64,
    pub(super) errors: BTreeMap<String, u64>,
    pub(super) send_failures: Vec<String>,
    pub(super) cpu: CpuUse,
    pub(super) saturated: bool,
}

impl MsgStep {
    pub(super) fn delivered_rate(&self) -> f64 {
        self.delivered_in_window as f64 / self.secs
    }

    pub(super) fn lost(&self) -> u64 {
        self.sent.saturating_sub(self.delivered)
    }
}

pub(super) struct MsgResults {
    pub(super) pairs: usize,
    pub(super) from: String,
    pub(super) to: String,
    pub(super) hosts: BTreeMap<String, usize>,
    pub(super) steps: Vec<MsgStep>,
    /// Offered rates not run because an earlier step saturated.
    pub(super) skipped: Vec<u32>,
}

pub(super) async fn bench_messages(
    args: &Args,
    cluster: &Cluster,
    run_id: &str,
) -> Result<MsgResults> {
    let from = cluster.node(&args.msg_from)?.ws_url();
    let to = cluster.node(&args.msg_to)?.ws_url();
    let n = args.msg_pairs;
    // Pairs, 8 set up at once; bounded by 120 s.
    let mut pairs: Vec<Pair> = Vec::with_capacity(n);
    let setup = async {
        let mut s = futures::stream::iter(0..n)
            .map(|i| setup_pair(&from, &to, run_id, i))
            .buffer_unordered(8);
        while let Some(p) = s.next().await {
            pairs.push(p?);
        }
        anyhow::Ok(())
    };
    let set_up = tokio::time::timeout(Duration::from_secs(120), setup).await;
    let set_up = match set_up {
        Ok(r) => r,
        Err(_) => Err(anyhow!("setting up {n} pairs took more than 120 s")),
    };
    if let Err(e) = set_up {
        leave_pairs(pairs).await;
        return Err(e);
    }
    let mut hosts: BTreeMap<String, usize> = BTreeMap::new();
    for p in &pairs {
        *hosts.entry(p.host.clone()).or_default() += 1;
    }
    eprintln!(
        "   {n} pairs: senders on {}, receivers on {}, rooms hosted on {hosts:?}",
        args.msg_from, args.msg_to
    );

    // Receivers, one task each; step 0 is the warm-up.
    let steps_total = args.msg_rates.len() + 1;
    let stop = Arc::new(AtomicBool::new(false));
    let total_received = Arc::new(AtomicU64::new(0));
    let part_deadline =
        Instant::now() + Duration::from_secs(120 + steps_total as u64 * (args.msg_seconds + 30));
    let mut states = Vec::with_capacity(n);
    let mut tasks = Vec::with_capacity(n);
    for p in &pairs {
        let state = Arc::new(Mutex::new(RecvState {
            steps: vec![StepRecv::default(); steps_total],
            closed: None,
        }));
        states.push(state.clone());
        tasks.push(tokio::spawn(receive_loop(
            p.receiver.clone(),
            p.sender_id.clone(),
            state,
            total_received.clone(),
            stop.clone(),
            part_deadline,
        )));
    }

    let result = async {
        let warm = run_step(
            cluster,
            &pairs,
            &states,
            &total_received,
            0,
            args.msg_rates[0].min(200),
            Duration::from_secs(2),
        )
        .await?;
        eprintln!(
            "   warm-up: sent {}, delivered {}, p99 {:.2} ms",
            warm.sent,
            warm.delivered,
            warm.lat.percentile(99.0) as f64 / 1000.0
        );
        let mut steps = Vec::new();
        let mut skipped = Vec::new();
        for (k, &rate) in args.msg_rates.iter().enumerate() {
            if steps.last().is_some_and(|s: &MsgStep| s.saturated) {
                skipped.push(rate);
                continue;
            }
            if Instant::now() + Duration::from_secs(args.msg_seconds + 15) > part_deadline {
                skipped.push(rate);
                continue;
            }
            let s = run_step(
                cluster,
                &pairs,
                &states,
                &total_received,
                k + 1,
                rate,
                Duration::from_secs(args.msg_seconds),
            )
            .await?;
            eprintln!(
                "   offered {rate}/s: sent {:.0}/s, delivered {:.0}/s, lost {}, p50 {:.2} ms, p99 {:.2} ms, n1 {:.0} % n2 {:.0} % nats {:.0} % bench {:.0} %{}",
                s.sent as f64 / s.secs,
                s.delivered_rate(),
                s.lost(),
                s.lat.percentile(50.0) as f64 / 1000.0,
                s.lat.percentile(99.0) as f64 / 1000.0,
                s.cpu.of(&args.msg_from),
                s.cpu.of(&args.msg_to),
                s.cpu.of("nats"),
                s.cpu.bench,
                if s.saturated { " (saturated)" } else { "" }
            );
            steps.push(s);
        }
        anyhow::Ok((steps, skipped))
    }
    .await;
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        let _ = tokio::time::timeout(Duration::from_secs(2), t).await;
    }
    leave_pairs(pairs).await;
    let (steps, skipped) = result?;
    Ok(MsgResults {
        pairs: n,
        from: args.msg_from.clone(),
        to: args.msg_to.clone(),
        hosts,
        steps,
        skipped,
    })
}

pub(super) async fn leave_pairs(pairs: Vec<Pair>) {
    let mut clients = Vec::with_capacity(pairs.len() * 2);
    for p in pairs {
        clients.push(p.sender);
        clients.push(p.receiver);
    }
    leave_all(clients).await;
}

/// Receiver `r<i>` joins through `to`, then sender `s<i>` through `from`, in room `i`.
pub(super) async fn setup_pair(from: &str, to: &str, run_id: &str, i: usize) -> Result<Pair> {
    let room = format!("bm-{run_id}-{i:04}");
    let (rid, sid) = (format!("r{i:04}"), format!("s{i:04}"));
    let receiver = Client::connect(to)
        .await
        .with_context(|| format!("{rid}: connect"))?;
    let j = receiver
        .join(&room, &token(&room, &rid)?)
        .await
        .with_context(|| format!("{rid}: join"))?;
    let sender = Client::connect(from)
        .await
        .with_context(|| format!("{sid}: connect"))?;
    sender
        .join(&room, &token(&room, &sid)?)
        .await
        .with_context(|| format!("{sid}: join"))?;
    Ok(Pair {
        sender: Arc::new(sender),
        receiver: Arc::new(receiver),
        receiver_id: rid,
        sender_id: sid,
        host: j.node.to_string(),
    })
}

/// Reads the receiver's messages in order; every `message` from `sender` counts toward its
/// step with latency = arrival − the embedded send time.
pub(super) async fn receive_loop(
    client: Arc<Client>,
    sender: String,
    state: Arc<Mutex<RecvState>>,
    total: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    deadline: Instant,
) {
    let mut cursor = client.message_count();
    while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
        let m = match client
            .wait_for_since(cursor, Duration::from_millis(200), |_| true)
            .await
        {
            Ok(m) => m,
            Err(e) => {
                if client.is_closed() {
                    lock(&state).closed = Some(e.to_string());
                    return;
                }
                continue;
            }
        };
        cursor += 1;
        let now = chaos::payload::unix_now_us();
        let ServerMessage::Message { from, data } = m else {
            continue;
        };
        if from.as_str() != sender {
            continue;
        }
        let field = |k: &str| data.get(k).and_then(|v| v.as_u64());
        let (Some(step), Some(seq), Some(sent)) = (field("k"), field("n"), field("t")) else {
            continue;
        };
        let mut st = lock(&state);
        let Some(s) = st.steps.get_mut(step as usize) else {
            continue;
        };
        s.received += 1;
        s.lat.record(now.saturating_sub(sent));
        if s.last_n.is_some_and(|l| seq <= l) {
            s.out_of_order += 1;
        }
        s.last_n = Some(s.last_n.map_or(seq, |l| l.max(seq)));
        drop(st);
        total.fetch_add(1, Ordering::Relaxed);
    }
}

pub(super) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// One open-loop step: every sender paces `rate / pairs` messages/s for `window`, then the
/// receivers get up to 10 s to catch up.
pub(super) async fn run_step(
    cluster: &Cluster,
    pairs: &[Pair],
    states: &[Arc<Mutex<RecvState>>],
    total: &AtomicU64,
    step: usize,
    rate: u32,
    window: Duration,
) -> Result<MsgStep> {
    let per_sender = f64::from(rate) / pairs.len() as f64;
    let cursors: Vec<usize> = pairs.iter().map(|p| p.sender.message_count()).collect();
    let cpu0 = cluster.cpu_snapshot();
    let recv0 = total.load(Ordering::Relaxed);
    let t0 = Instant::now();
    let sends = futures::future::join_all(
        pairs
            .iter()
            .map(|p| send_paced(&p.sender, &p.receiver_id, step, per_sender, window)),
    )
    .await;
    let secs = t0.elapsed().as_secs_f64();
    let delivered_in_window = total.load(Ordering::Relaxed) - recv0;
    let cpu = CpuUse::between(&cpu0, &cluster.cpu_snapshot());
    let sent: u64 = sends.iter().map(|(n, _)| n).sum();
    let send_failures: Vec<String> = sends.iter().filter_map(|(_, e)| e.clone()).collect();

    // Drain: until everything sent arrived, bounded by 10 s.
    let received = || -> u64 {
        states
            .iter()
            .map(|s| lock(s).steps.get(step).map_or(0, |r| r.received))
            .sum()
    };
    let drain_deadline = Instant::now() + Duration::from_secs(10);
    while received() < sent && Instant::now() < drain_deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut lat = LatencyHistogram::default();
    let mut delivered = 0;
    let mut out_of_order = 0;
    for s in states {
        let st = lock(s);
        if let Some(r) = st.steps.get(step) {
            lat.merge(&r.lat);
            delivered += r.received;
            out_of_order += r.out_of_order;
        }
    }
    let mut errors: BTreeMap<String, u64> = BTreeMap::new();
    for (p, &from) in pairs.iter().zip(&cursors) {
        for m in p.sender.messages().into_iter().skip(from) {
            if let ServerMessage::Error { code, .. } = m {
                *errors.entry(code.as_str().to_owned()).or_default() += 1;
            }
        }
    }
    let closed = states.iter().filter(|s| lock(s).closed.is_some()).count();
    if closed > 0 {
        *errors.entry("receiver socket closed".into()).or_default() += closed as u64;
    }
    let delivered_rate = delivered_in_window as f64 / secs;
    let saturated = delivered_rate < 0.9 * f64::from(rate)
        || lat.percentile(99.0) > 1_000_000
        || delivered < sent
        || !send_failures.is_empty()
        || !errors.is_empty();
    Ok(MsgStep {
        offered: rate,
        secs,
        sent,
        delivered_in_window,
        delivered,
        lat,
        out_of_order,
        errors,
        send_failures,
        cpu,
        saturated,
    })
}

/// Sends `rate` messages/s to `to` for `window` (catching up in bursts when behind); each
/// carries the step, its sequence number and its send time (µs). Returns how many were sent
/// and the error that stopped it early, if any.
pub(super) async fn send_paced(
    c: &Client,
    to: &str,
    step: usize,
    rate: f64,
    window: Duration,
) -> (u64, Option<String>) {
    let start = tokio::time::Instant::now();
    let mut sent = 0u64;
    while start.elapsed() < window {
        let due = (start.elapsed().as_secs_f64() * rate) as u64 + 1;
        while sent < due && start.elapsed() < window {
            let data = serde_json::json!({
                "k": step,
                "n": sent,
                "t": chaos::payload::unix_now_us(),
            });
            if let Err(e) = c.send_message(to, data).await {
                return (sent, Some(e.to_string()));
            }
            sent += 1;
        }
        let next = start + Duration::from_secs_f64(sent as f64 / rate);
        tokio::time::sleep_until(next).await;
    }
    (sent, None)
}
