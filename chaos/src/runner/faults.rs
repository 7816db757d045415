//! The injectors of the faults beyond kill, stop, NATS restart and the hostile client:
//! CPU starvation by competing processes, join/leave churn, a NATS cut of one node, and the
//! new room placed while a coordinator is dead. Each does the real thing to real processes
//! and is tested against one (`tests/tests/chaos_faults.rs`).

use crate::bench;
use crate::impair::{Link, TcpProxy};
use crate::{mint_tokens, ClientConfig, Participant, ParticipantConfig, PublishOpts};
use anyhow::{bail, Context, Result};
use protocol::token::Claims;
use protocol::{RoomId, UserId};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::Duration;
use tokio::time::Instant;

/// Competing busy processes a starved node shares its CPU with.
pub const HOGS: usize = 4;
/// Churners in a room at a time.
pub const CHURNERS: usize = 2;
/// Bound on one churn cycle (join, media from a member, leave).
const CYCLE: Duration = Duration::from_secs(15);
/// Most churn cycles per churner, whatever the pause.
const MAX_CYCLES: usize = 1_000;

/// CPUs of this machine (`nproc`), at least 1.
pub fn cpus() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// `taskset -a -p -c <cpus> <pid>`: every thread of `pid` onto `cpus`.
fn pin(pid: u32, cpus: &str) -> Result<()> {
    let out = Command::new("taskset")
        .args(["-a", "-p", "-c", cpus, &pid.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()
        .context("running taskset (util-linux)")?;
    if !out.status.success() {
        bail!(
            "taskset -a -p -c {cpus} {pid}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// A process starved of CPU: pinned, with its competitors, to the machine's last CPU. Ends
/// (competitors killed, the process back on every CPU) on [`Starvation::end`] or drop.
pub struct Starvation {
    pid: u32,
    hogs: Vec<Child>,
    /// The process's CPU ticks and the time when it began.
    began: (u64, Instant),
    ended: bool,
}

impl Starvation {
    /// Pins `pid` to the last CPU and starts [`HOGS`] busy `sh` loops pinned there too.
    pub fn begin(pid: u32) -> Result<Starvation> {
        let cpu = (cpus() - 1).to_string();
        let ticks = bench::proc_cpu_ticks(&pid.to_string())?;
        pin(pid, &cpu)?;
        let mut s = Starvation {
            pid,
            hogs: Vec::new(),
            began: (ticks, Instant::now()),
            ended: false,
        };
        for _ in 0..HOGS {
            let hog = Command::new("taskset")
                .args(["-c", &cpu, "sh", "-c", "while :; do :; done"])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .context("starting a competing busy process")?;
            s.hogs.push(hog);
        }
        Ok(s)
    }

    /// The share of one CPU the process got since [`Starvation::begin`] (1.0 = a whole CPU).
    pub fn share(&self) -> Result<f64> {
        let now = bench::proc_cpu_ticks(&self.pid.to_string())?;
        let secs = self.began.1.elapsed().as_secs_f64().max(1e-3);
        let (clk_tck, _) = bench::clk_and_nproc();
        Ok(now.saturating_sub(self.began.0) as f64 / clk_tck / secs)
    }

    /// Kills the competitors and puts the process back on every CPU; returns its share of a
    /// CPU over the starvation.
    pub fn end(mut self) -> Result<f64> {
        let share = self.share();
        self.stop()?;
        share
    }

    fn stop(&mut self) -> Result<()> {
        if self.ended {
            return Ok(());
        }
        self.ended = true;
        for h in &mut self.hogs {
            let _ = h.kill();
            let _ = h.wait();
        }
        // A process killed meanwhile has nothing to restore.
        if std::path::Path::new(&format!("/proc/{}", self.pid)).exists() {
            pin(self.pid, &format!("0-{}", cpus() - 1))?;
        }
        Ok(())
    }
}

impl Drop for Starvation {
    fn drop(&mut self) {
        let _ = self.stop();
    }
}

/// Each node's NATS connection through its own proxy, so one node can be cut from NATS
/// while the rest of the cluster keeps it.
pub struct NatsCuts {
    proxies: BTreeMap<String, (TcpProxy, Link)>,
}

impl NatsCuts {
    /// A proxy to `nats` per node id, on a free loopback port.
    pub async fn start(nodes: &[String], nats: SocketAddr) -> Result<NatsCuts> {
        let mut proxies = BTreeMap::new();
        for node in nodes {
            let link = Link::new(Default::default());
            let proxy = TcpProxy::start("127.0.0.1:0".parse()?, nats, link.clone())
                .await
                .with_context(|| format!("NATS proxy of {node}"))?;
            proxies.insert(node.clone(), (proxy, link));
        }
        Ok(NatsCuts { proxies })
    }

    /// The URL `node` reaches NATS at.
    pub fn url(&self, node: &str) -> Option<String> {
        let (proxy, _) = self.proxies.get(node)?;
        Some(format!("nats://{}", proxy.local_addr()))
    }

    /// Cuts (`true`) or heals `node`'s NATS link: while cut, its connections stay open and
    /// nothing passes either way (held, not dropped: a healed stream goes on intact).
    pub fn cut(&self, node: &str, on: bool) -> Result<()> {
        let (_, link) = self
            .proxies
            .get(node)
            .with_context(|| format!("{node} has no NATS proxy"))?;
        link.partition(on);
        Ok(())
    }

    /// Connections open through `node`'s proxy.
    pub fn connections(&self, node: &str) -> usize {
        self.proxies.get(node).map_or(0, |(p, _)| p.connections())
    }
}

/// What a churn produced.
#[derive(Debug, Default)]
pub struct ChurnOutcome {
    pub cycles: usize,
    /// Cycles whose join, media or leave failed, with why (the first few).
    pub failures: Vec<String>,
    pub failed: usize,
}

/// [`CHURNERS`] participants join `room` through `ws`, publish video, wait for media from
/// `member`, and leave, over and over until `pause` has passed (each cycle bounded).
pub async fn churn(
    ws: &str,
    room: &RoomId,
    member: &UserId,
    secret: &str,
    tag: &str,
    pause: Duration,
) -> ChurnOutcome {
    let until = Instant::now() + pause;
    let one = |k: usize| async move {
        let mut out = ChurnOutcome::default();
        for cycle in 0..MAX_CYCLES {
            if Instant::now() >= until {
                break;
            }
            let user = format!("churn{k}x{cycle}t{tag}@{room}");
            match tokio::time::timeout(CYCLE, churn_once(ws, room, &user, member, secret)).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => out.fail(format!("{user}: {e:#}")),
                Err(_) => out.fail(format!("{user}: cycle not done within {CYCLE:?}")),
            }
            out.cycles += 1;
        }
        out
    };
    let all = futures::future::join_all((0..CHURNERS).map(one)).await;
    let mut total = ChurnOutcome::default();
    for o in all {
        total.cycles += o.cycles;
        total.failed += o.failed;
        total.failures.extend(o.failures);
    }
    total.failures.truncate(5);
    total
}

impl ChurnOutcome {
    fn fail(&mut self, why: String) {
        self.failed += 1;
        self.failures.push(why);
    }
}

async fn churn_once(
    ws: &str,
    room: &RoomId,
    user: &str,
    member: &UserId,
    secret: &str,
) -> Result<()> {
    let claims = Claims::new(room.clone(), UserId::new(user)?, 0, 0);
    let tokens = mint_tokens(secret, claims, Duration::from_secs(600));
    let config = ParticipantConfig {
        client: ClientConfig {
            ice_check_interval: Some(Duration::from_millis(50)),
            ..ClientConfig::default()
        },
        region: Some("eu".into()),
        ..ParticipantConfig::default()
    };
    let started = Instant::now();
    let p = Participant::join(ws, room.as_str(), tokens, config).await?;
    let media = async {
        p.publish(PublishOpts {
            audio: false,
            video: true,
            video_pps: 30,
            ..PublishOpts::default()
        })
        .await?;
        p.wait_media_since(member.as_str(), started, CYCLE).await?;
        anyhow::Ok(())
    }
    .await;
    Participant::leave_all([&p]).await;
    media
}

/// A participant joins a room nobody is in (so a coordinator must place it) through `ws`;
/// returns how long `joined` took. It leaves at once.
pub async fn place_new_room(ws: &str, secret: &str, tag: &str) -> Result<Duration> {
    let room = RoomId::new(format!("chaosnew{tag}"))?;
    let claims = Claims::new(room.clone(), UserId::new(format!("placer@{room}"))?, 0, 0);
    let tokens = mint_tokens(secret, claims, Duration::from_secs(600));
    let started = Instant::now();
    let p = Participant::join(ws, room.as_str(), tokens, ParticipantConfig::default()).await?;
    let took = started.elapsed();
    Participant::leave_all([&p]).await;
    Ok(took)
}
