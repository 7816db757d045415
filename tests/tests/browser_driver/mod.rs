//! Running the Chromium drivers of `tests/browser` (Node.js scripts on playwright-core) from
//! a test: finding Chromium and Node.js, installing the npm packages when missing, and a
//! driver process whose stdout lines (events, then the JSON result last) arrive as they are
//! printed, with a stdin to answer it.
//!
//! Needs `/usr/bin/chromium` (or `CHROMIUM_PATH`), Node.js and npm (`npm ci` runs in
//! `tests/browser` when its `node_modules` is missing). `SKIP_BROWSER_TESTS=1` skips the
//! tests that use it.

// Each test binary that includes this module uses a part of it.
#![allow(dead_code)]

use anyhow::{bail, Context};
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Chromium, the driver scripts' directory and Node.js.
pub struct Browser {
    pub chromium: String,
    pub dir: PathBuf,
    pub node_js: PathBuf,
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests crate sits in the workspace")
        .to_path_buf()
}

/// The Node.js binary. The SFU's own binary is also called `node`, so check that what PATH
/// offers really is Node.js.
fn node_js() -> anyhow::Result<PathBuf> {
    if let Some(p) = std::env::var_os("NODE_JS") {
        return Ok(PathBuf::from(p));
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    for dir in std::env::split_paths(&path) {
        let candidate = dir.join("node");
        if !candidate.is_file() {
            continue;
        }
        let is_node_js = Command::new(&candidate)
            .arg("--version")
            .stdin(Stdio::null())
            .output()
            .map(|o| o.status.success() && o.stdout.starts_with(b"v"))
            .unwrap_or(false);
        if is_node_js {
            return Ok(candidate);
        }
    }
    bail!("Node.js not found on PATH (install Node 20, or set NODE_JS)")
}

fn ensure_npm_deps(browser_dir: &Path) -> anyhow::Result<()> {
    if browser_dir
        .join("node_modules/playwright-core/package.json")
        .is_file()
    {
        return Ok(());
    }
    eprintln!("installing tests/browser dependencies: npm ci");
    let out = Command::new("npm")
        .args(["ci", "--no-audit", "--no-fund"])
        .current_dir(browser_dir)
        .stdin(Stdio::null())
        .output()
        .context("running npm ci (is npm installed?)")?;
    if !out.status.success() {
        bail!(
            "npm ci failed in {}: {}\n{}",
            browser_dir.display(),
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

/// Chromium and Node.js for the drivers, or `None` when `SKIP_BROWSER_TESTS=1`.
pub fn setup() -> anyhow::Result<Option<Browser>> {
    if std::env::var_os("SKIP_BROWSER_TESTS").is_some_and(|v| v == "1") {
        eprintln!("SKIP_BROWSER_TESTS=1: skipping the browser end-to-end test");
        return Ok(None);
    }
    let chromium = std::env::var("CHROMIUM_PATH").unwrap_or_else(|_| "/usr/bin/chromium".into());
    if !Path::new(&chromium).is_file() {
        bail!(
            "{chromium} is missing: apt-get install -y chromium chromium-driver \
             (or set CHROMIUM_PATH, or SKIP_BROWSER_TESTS=1 to skip this test)"
        );
    }
    let dir = workspace_root().join("tests/browser");
    let node_js = node_js()?;
    ensure_npm_deps(&dir)?;
    tests::init_logs();
    Ok(Some(Browser {
        chromium,
        dir,
        node_js,
    }))
}

/// Each of the driver's two pages (alice, bob) decoded the other's video, received the
/// other's audio, and got the node's RTCP sender reports for both, by the driver's final
/// result.
pub fn check_media_both_ways(result: &serde_json::Value) -> anyhow::Result<()> {
    for (who, from) in [("alice", "from_bob"), ("bob", "from_alice")] {
        let stats = &result["pages"][who][from];
        let frames = stats["video"]["framesDecoded"].as_u64().unwrap_or(0);
        let packets = stats["audio"]["packetsReceived"].as_u64().unwrap_or(0);
        anyhow::ensure!(frames > 0, "{who} decoded no video frames: {stats}");
        anyhow::ensure!(packets > 0, "{who} received no audio packets: {stats}");
        for kind in ["video", "audio"] {
            let reports = stats[kind]["senderReports"].as_u64().unwrap_or(0);
            anyhow::ensure!(
                reports > 0,
                "{who} got no RTCP sender report for {kind}: {stats}"
            );
        }
    }
    Ok(())
}

/// Where a test keeps a screenshot: `E2E_SCREENSHOT`, else cargo's per-test temporary
/// directory.
pub fn screenshot_path(name: &str) -> String {
    std::env::var("E2E_SCREENSHOT").unwrap_or_else(|_| {
        Path::new(env!("CARGO_TARGET_TMPDIR"))
            .join(name)
            .display()
            .to_string()
    })
}

/// A running driver script.
pub struct Driver {
    child: Child,
    stdin: Option<ChildStdin>,
    lines: mpsc::Receiver<String>,
    stdout: Vec<String>,
    stderr: Option<JoinHandle<String>>,
}

impl Driver {
    /// Starts `node <script> <args…>` in `tests/browser` with `env` beside `CHROMIUM_PATH`.
    pub fn spawn(
        browser: &Browser,
        script: &str,
        args: &[String],
        env: &[(&str, String)],
    ) -> anyhow::Result<Driver> {
        let mut cmd = Command::new(&browser.node_js);
        cmd.arg(browser.dir.join(script))
            .args(args)
            .current_dir(&browser.dir)
            .env("CHROMIUM_PATH", &browser.chromium)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd
            .spawn()
            .with_context(|| format!("starting {}", browser.node_js.display()))?;
        let stdin = child.stdin.take();
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        // Read on a thread so that the pipe can never fill up and block the driver.
        let mut stderr = child.stderr.take().expect("piped stderr");
        let stderr = std::thread::spawn(move || {
            let mut buf = Vec::new();
            let _ = stderr.read_to_end(&mut buf);
            String::from_utf8_lossy(&buf).into_owned()
        });
        Ok(Driver {
            child,
            stdin,
            lines,
            stdout: Vec::new(),
            stderr: Some(stderr),
        })
    }

    /// The next stdout line whose JSON has `"event": <event>`, waiting at most `timeout`.
    /// `None` when the driver ended (or printed its result) first, or the time ran out.
    pub fn wait_event(&mut self, event: &str, timeout: Duration) -> Option<serde_json::Value> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = self.lines.recv_timeout(left).ok()?;
            self.stdout.push(line.clone());
            let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) else {
                continue;
            };
            if v["event"] == event {
                return Some(v);
            }
            if v.get("ok").is_some() {
                return None;
            }
        }
    }

    /// Writes one line to the driver's stdin.
    pub fn send_line(&mut self, line: &str) -> anyhow::Result<()> {
        let stdin = self.stdin.as_mut().context("driver stdin closed")?;
        writeln!(stdin, "{line}")?;
        stdin.flush()?;
        Ok(())
    }

    /// Waits for the driver to exit (killing it after `timeout`), prints what it said, and
    /// returns its result (the last stdout line), which must say `"ok": true`.
    pub fn finish(mut self, timeout: Duration) -> anyhow::Result<serde_json::Value> {
        drop(self.stdin.take());
        let deadline = Instant::now() + timeout;
        let status = loop {
            if let Some(status) = self.child.try_wait()? {
                break Some(status);
            }
            if Instant::now() >= deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                break None;
            }
            std::thread::sleep(Duration::from_millis(100));
        };
        // The reader thread ends at EOF, which the exit brings.
        while let Ok(line) = self.lines.recv_timeout(Duration::from_secs(5)) {
            self.stdout.push(line);
        }
        let stderr = self
            .stderr
            .take()
            .and_then(|h| h.join().ok())
            .unwrap_or_default();
        let stdout = self.stdout.join("\n");
        eprintln!("---- driver stderr\n{stderr}---- driver stdout\n{stdout}");
        let Some(status) = status else {
            bail!("the browser driver did not finish within {timeout:?}");
        };
        let last_line = self.stdout.iter().rev().find(|l| !l.trim().is_empty());
        let result: serde_json::Value = match last_line {
            Some(line) => serde_json::from_str(line)
                .with_context(|| format!("driver printed no JSON result: {line}"))?,
            None => bail!("driver printed nothing on stdout; it exited with {status}"),
        };
        if !status.success() || result["ok"] != serde_json::Value::Bool(true) {
            bail!(
                "browser end-to-end test failed ({status}): {}",
                result["reason"].as_str().unwrap_or("no reason given")
            );
        }
        Ok(result)
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
