//! One child process of the cluster: [`Proc`].

use super::*;

/// What a child process is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Nats,
    Coordinator,
    Node,
}

/// One child process, killed when dropped.
#[derive(Debug)]
pub struct Proc {
    /// `nats` (`nats2`, `nats3`), then the ids of the spec.
    pub(super) id: String,
    pub(super) role: Role,
    /// Nodes only.
    pub(super) region: Option<String>,
    /// HTTP port (coordinators, nodes) or client port (nats).
    pub(super) port: u16,
    /// A nats-server's monitoring port, when [`NatsSpec::monitor`] is on.
    pub(super) monitor_port: Option<u16>,
    pub(super) child: Child,
    pub(super) log: PathBuf,
    pub(super) exit: Option<ExitStatus>,
    /// Killed or drained on purpose: its exit is no crash.
    pub(super) expected_exit: bool,
    /// How it was started, to start it again.
    pub(super) program: PathBuf,
    pub(super) args: Vec<String>,
    pub(super) child_log: String,
}

impl Proc {
    pub fn id(&self) -> &str {
        &self.id
    }

    pub fn role(&self) -> Role {
        self.role
    }

    /// A node's region.
    pub fn region(&self) -> Option<&str> {
        self.region.as_deref()
    }

    /// The HTTP port of a coordinator or node (`/readyz`, `/metrics`), the client port of
    /// nats-server.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// A nats-server's monitoring HTTP port (`/connz`, `/jsz`, `/routez`), if it serves one.
    pub fn monitor_port(&self) -> Option<u16> {
        self.monitor_port
    }

    /// A nats-server's client URL.
    pub fn nats_url(&self) -> Option<String> {
        (self.role == Role::Nats).then(|| format!("nats://127.0.0.1:{}", self.port))
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// A node's WebSocket signaling URL.
    pub fn ws_url(&self) -> String {
        format!("ws://127.0.0.1:{}/ws", self.port)
    }

    /// The body of `GET <path>` on this process's HTTP port (bounded by 5 s).
    pub async fn http_get(&self, path: &str) -> Result<String> {
        bench::http_get(self.port, path)
            .await
            .with_context(|| format!("{} {path}", self.id))
    }

    /// How the process ended, once it has.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        if self.exit.is_none() {
            self.exit = self.child.try_wait().ok().flatten();
        }
        self.exit
    }

    /// The last `lines` lines of its log.
    pub fn log_tail(&self, lines: usize) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// Sends `signal` (a name `kill` knows: `KILL`, `STOP`, `CONT`, `TERM`, `INT`) to the
    /// process. std has no signals but SIGKILL and the crate forbids `unsafe`: `kill` does it.
    pub fn signal(&mut self, signal: &str) -> Result<()> {
        if self.exited().is_some() {
            anyhow::bail!("{} has exited", self.id);
        }
        let status = Command::new("kill")
            .args([&format!("-{signal}"), &self.pid().to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .context("run kill")?;
        anyhow::ensure!(status.success(), "kill -{signal} {} failed", self.id);
        if signal == "KILL" {
            self.expected_exit = true;
            let _ = self.child.wait();
            self.exited();
        }
        Ok(())
    }

    /// Marks an exit (after a drain, say) as wanted, so it is not reported as a crash.
    pub fn expect_exit(&mut self) {
        self.expected_exit = true;
    }

    pub(super) fn kill(&mut self) {
        if self.exited().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Spawns one child, its output appended to `log`.
pub(super) fn launch(
    id: &str,
    program: &Path,
    args: &[String],
    child_log: &str,
    log: &Path,
) -> Result<Child> {
    let out = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .with_context(|| format!("opening {}", log.display()))?;
    let err = out.try_clone()?;
    let child = Command::new(program)
        .args(args)
        .env("RUST_LOG", child_log)
        // Colour codes would hide WARN/ERROR from `health`.
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .spawn()
        .with_context(|| format!("starting {} ({id})", program.display()))?;
    eprintln!(
        "   started {id} (pid {}, log {})",
        child.id(),
        log.display()
    );
    Ok(child)
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}
