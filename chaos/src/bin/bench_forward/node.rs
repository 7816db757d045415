//! The node under test: a child process, and `perf record` of it.

use super::*;

/// A node child process, stopped when dropped.
pub(super) struct NodeProc {
    pub(super) child: Child,
    pub(super) port: u16,
}

impl NodeProc {
    pub(super) fn start(bin: &Path, log: &Path) -> Result<NodeProc> {
        let port = free_port()?;
        let out =
            std::fs::File::create(log).with_context(|| format!("creating {}", log.display()))?;
        let err = out.try_clone()?;
        let child = Command::new(bin)
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .args(["--dev-tokens", "--udp-ports", "0", "--room-node-share", "0"])
            // Every subscriber comes from 127.0.0.1, all into one room: the per-address
            // connection limit (200) refused the 200th subscriber, and the room join rate
            // (50/s) would pace the joins.
            .args([
                "--max-connections-per-ip",
                "100000",
                "--room-join-rate",
                "100000",
            ])
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        Ok(NodeProc { child, port })
    }

    pub(super) fn pid(&self) -> u32 {
        self.child.id()
    }

    pub(super) fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// SIGINT (the node's graceful shutdown), then SIGKILL after 5 s.
    pub(super) fn stop(&mut self) {
        if self.exited().is_some() {
            return;
        }
        let _ = Command::new("kill")
            .args(["-INT", &self.pid().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if self.exited().is_some() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for NodeProc {
    fn drop(&mut self) {
        if self.exited().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// `perf record` of the node for `secs` (sampling at 999 Hz, no call graphs), then the
/// hottest symbols by self time.
pub(super) async fn perf_profile(
    pid: u32,
    secs: u64,
    dir: &Path,
    n: usize,
    load: Load,
) -> Result<String> {
    let data = dir.join(format!("perf-n{n}-{}.data", load.name()));
    let data_s = data.to_string_lossy().to_string();
    let pid_s = pid.to_string();
    let secs_s = secs.to_string();
    let record = tokio::process::Command::new("perf")
        .args(["record", "-q", "-F", "999", "-p", &pid_s, "-o", &data_s])
        .args(["--", "sleep", &secs_s])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output();
    let out = tokio::time::timeout(Duration::from_secs(secs + 30), record)
        .await
        .map_err(|_| anyhow!("perf record did not finish"))??;
    if !out.status.success() {
        bail!(
            "perf record: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let mut report = String::new();
    for sort in ["dso", "dso,symbol"] {
        let out = tokio::process::Command::new("perf")
            .args(["report", "-i", &data_s, "--stdio", "--no-children", "-q"])
            .args(["--sort", sort, "--percent-limit", "1"])
            .stderr(Stdio::null())
            .output();
        let out = tokio::time::timeout(Duration::from_secs(120), out)
            .await
            .map_err(|_| anyhow!("perf report did not finish"))??;
        let text = String::from_utf8_lossy(&out.stdout);
        let lines: Vec<&str> = text
            .lines()
            .filter(|l| !l.trim().is_empty())
            .take(30)
            .map(|l| l.trim_end())
            .collect();
        let _ = writeln!(report, "by {sort} (self time, ≥ 1 %):");
        for l in lines {
            // perf pads the symbol column to the widest name and appends empty columns.
            let l = l.trim().trim_end_matches(['-', ' ']);
            let _ = writeln!(
                report,
                "  {}",
                l.split_whitespace().collect::<Vec<_>>().join(" ")
            );
        }
    }
    Ok(report)
}
