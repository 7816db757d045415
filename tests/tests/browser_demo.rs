//! The demo page, end to end in real browsers: a node runs in-process with dev tokens on,
//! and `tests/browser/demo.e2e.mjs` drives two headless Chromiums (Debian's `chromium`, fake
//! camera and microphone) that join one room through the page and must each decode the
//! other's video and receive the other's audio; then one loses its signaling socket and must
//! resume with media flowing again, and the other leaves and must vanish from the first's page.
//!
//! Needs `/usr/bin/chromium` (or `CHROMIUM_PATH`), Node.js and npm (`npm ci` runs in
//! `tests/browser` when its `node_modules` is missing). `SKIP_BROWSER_TESTS=1` skips it.
//! `E2E_SCREENSHOT=<path>` keeps a screenshot of the page (by default it goes to cargo's
//! per-test temporary directory).

use anyhow::{bail, Context};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// Generous: two Chromium starts, ICE/DTLS twice per participant, and a debug-built SFU on a
/// shared 2-core machine. The driver's own deadlines are shorter and say what was missing.
const DRIVER_TIMEOUT: Duration = Duration::from_secs(300);

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

/// Reads a child's pipe on a thread so that neither pipe can fill up and block it.
fn drain(mut pipe: impl Read + Send + 'static) -> std::thread::JoinHandle<String> {
    std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = pipe.read_to_end(&mut buf);
        String::from_utf8_lossy(&buf).into_owned()
    })
}

fn wait_with_deadline(child: &mut Child, timeout: Duration) -> anyhow::Result<Option<ExitStatus>> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(Some(status));
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Ok(None);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Chromium and Node.js for the driver, or `None` when `SKIP_BROWSER_TESTS=1`.
fn browser_setup() -> anyhow::Result<Option<(String, PathBuf, PathBuf)>> {
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
    let browser_dir = workspace_root().join("tests/browser");
    let node_js = node_js()?;
    ensure_npm_deps(&browser_dir)?;
    tests::init_logs();
    Ok(Some((chromium, browser_dir, node_js)))
}

/// Runs the driver with alice's page on `bases[0]` and bob's on the last of `bases`, and
/// checks that each decoded the other's video and received the other's audio.
fn run_driver(
    (chromium, browser_dir, node_js): &(String, PathBuf, PathBuf),
    bases: &[String],
    resume: bool,
    screenshot_name: &str,
) -> anyhow::Result<()> {
    let screenshot = std::env::var("E2E_SCREENSHOT").unwrap_or_else(|_| {
        Path::new(env!("CARGO_TARGET_TMPDIR"))
            .join(screenshot_name)
            .display()
            .to_string()
    });
    eprintln!("pages at {bases:?}; running the browser driver (screenshot: {screenshot})");
    let resume =
        std::env::var("E2E_RESUME").unwrap_or_else(|_| if resume { "1" } else { "0" }.into());
    let mut child = Command::new(node_js)
        .arg(browser_dir.join("demo.e2e.mjs"))
        .args(bases)
        .current_dir(browser_dir)
        .env("CHROMIUM_PATH", chromium)
        .env("E2E_SCREENSHOT", &screenshot)
        .env("E2E_RESUME", resume)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {}", node_js.display()))?;
    let stdout = drain(child.stdout.take().expect("piped stdout"));
    let stderr = drain(child.stderr.take().expect("piped stderr"));
    let status = wait_with_deadline(&mut child, DRIVER_TIMEOUT);
    let stdout = stdout.join().unwrap_or_default();
    let stderr = stderr.join().unwrap_or_default();
    let status = status?;

    eprintln!("---- driver stderr\n{stderr}---- driver stdout\n{stdout}");
    let Some(status) = status else {
        bail!("the browser driver did not finish within {DRIVER_TIMEOUT:?}");
    };
    let last_line = stdout.lines().rev().find(|l| !l.trim().is_empty());
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
    for (who, from) in [("alice", "from_bob"), ("bob", "from_alice")] {
        let stats = &result["pages"][who][from];
        let frames = stats["video"]["framesDecoded"].as_u64().unwrap_or(0);
        let packets = stats["audio"]["packetsReceived"].as_u64().unwrap_or(0);
        assert!(frames > 0, "{who} decoded no video frames: {stats}");
        assert!(packets > 0, "{who} received no audio packets: {stats}");
    }
    Ok(())
}

#[test]
fn two_browsers_see_and_hear_each_other() -> anyhow::Result<()> {
    let Some(setup) = browser_setup()? else {
        return Ok(());
    };
    let handle = node::spawn(node::Config::local_dev()).context("starting the node")?;
    let base = format!("http://{}", handle.http_addr());
    let outcome = run_driver(&setup, &[base], true, "browser_demo.png");
    handle.stop();
    outcome
}

/// Two regions, one node each, a real nats-server and coordinator: alice's page on the `eu`
/// node, bob's on the `us` node. Each is served in its own region, so the room spans both
/// nodes and each decodes the other's video through the relay link.
#[test]
fn two_browsers_in_two_regions_see_each_other_through_the_cascade() -> anyhow::Result<()> {
    let Some(setup) = browser_setup()? else {
        return Ok(());
    };
    let nats = tests::nats::NatsServer::start()?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let coordinator = coordinator::spawn(coordinator::Config::local(nats.url()))?;
    let nodes = [("eu-1", "eu"), ("us-1", "us")]
        .iter()
        .map(|(id, region)| {
            let mut c = node::Config::local_dev();
            c.node_id = protocol::NodeId::new(*id).expect("a valid id");
            c.region = (*region).into();
            c.nats_url = Some(nats.url());
            node::spawn(c)
        })
        .collect::<Result<Vec<_>, _>>()?;
    rt.block_on(tests::wait_until(
        Duration::from_secs(30),
        "the coordinator to see both nodes",
        || async {
            let snap = coordinator.snapshot();
            let healthy = snap.nodes.iter().filter(|n| n.healthy).count();
            if snap.ready && healthy == 2 {
                Ok(())
            } else {
                Err(format!("{snap:?}"))
            }
        },
    ))?;
    let bases: Vec<String> = nodes
        .iter()
        .map(|n| format!("http://{}", n.http_addr()))
        .collect();
    let outcome = run_driver(&setup, &bases, false, "browser_cascade.png");
    // Both nodes served the room: the media crossed the relay link.
    let relayed: Vec<u64> = nodes
        .iter()
        .map(|n| n.counters().relay_packets_out)
        .collect();
    for n in nodes {
        n.stop();
    }
    outcome?;
    assert!(
        relayed.iter().all(|p| *p > 0),
        "each node sent media over the relay link: {relayed:?}"
    );
    Ok(())
}
