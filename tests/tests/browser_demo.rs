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

mod browser_driver;

use anyhow::Context;
use browser_driver::{Browser, Driver};
use std::time::Duration;

/// Generous: two Chromium starts, ICE/DTLS twice per participant, and a debug-built SFU on a
/// shared 2-core machine. The driver's own deadlines are shorter and say what was missing.
const DRIVER_TIMEOUT: Duration = Duration::from_secs(300);

/// Runs the driver with alice's page on `bases[0]` and bob's on the last of `bases`, and
/// checks that each decoded the other's video and received the other's audio.
fn run_driver(
    browser: &Browser,
    bases: &[String],
    resume: bool,
    screenshot_name: &str,
) -> anyhow::Result<()> {
    run_driver_with(browser, bases, resume, screenshot_name, &[])
}

fn run_driver_with(
    browser: &Browser,
    bases: &[String],
    resume: bool,
    screenshot_name: &str,
    env: &[(&str, String)],
) -> anyhow::Result<()> {
    let screenshot = browser_driver::screenshot_path(screenshot_name);
    eprintln!("pages at {bases:?}; running the browser driver (screenshot: {screenshot})");
    let resume =
        std::env::var("E2E_RESUME").unwrap_or_else(|_| if resume { "1" } else { "0" }.into());
    let mut env = env.to_vec();
    env.extend([("E2E_SCREENSHOT", screenshot), ("E2E_RESUME", resume)]);
    let driver = Driver::spawn(browser, "demo.e2e.mjs", bases, &env)?;
    let result = driver.finish(DRIVER_TIMEOUT)?;
    browser_driver::check_media_both_ways(&result)
}

#[test]
fn two_browsers_see_and_hear_each_other() -> anyhow::Result<()> {
    let Some(browser) = browser_driver::setup()? else {
        return Ok(());
    };
    let handle = node::spawn(node::Config::local_dev()).context("starting the node")?;
    let base = format!("http://{}", handle.http_addr());
    let outcome = run_driver(&browser, &[base], true, "browser_demo.png");
    handle.stop();
    outcome
}

/// The node serves the page over HTTPS and signaling over WSS itself (rustls, a test
/// certificate for 127.0.0.1 made here): both browsers join through it, and a plain-HTTP
/// request to the same port is not served.
#[test]
fn two_browsers_join_over_https_and_wss() -> anyhow::Result<()> {
    let Some(browser) = browser_driver::setup()? else {
        return Ok(());
    };
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("tls-node");
    std::fs::create_dir_all(&dir)?;
    let cert = rcgen::generate_simple_self_signed(vec!["127.0.0.1".into(), "localhost".into()])?;
    let (cert_file, key_file) = (dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::write(&cert_file, cert.cert.pem())?;
    std::fs::write(&key_file, cert.signing_key.serialize_pem())?;
    let mut config = node::Config::local_dev();
    config.tls = Some((cert_file, key_file));
    let handle = node::spawn(config).context("starting the node")?;
    assert!(handle.ws_url().starts_with("wss://"), "{}", handle.ws_url());
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let plain = rt.block_on(tests::http_get(handle.http_addr(), "/healthz", &[]));
    assert!(
        !matches!(plain, Ok((200, _))),
        "plain HTTP on the TLS port: {plain:?}"
    );
    let base = format!("https://{}", handle.http_addr());
    // The driver's Chromium accepts the test certificate (no CA signed it).
    let env = [("E2E_TLS_INSECURE", "1".to_owned())];
    let outcome = run_driver_with(&browser, &[base], false, "browser_tls.png", &env);
    handle.stop();
    outcome
}

/// Two regions, one node each, a real nats-server and coordinator: alice's page on the `eu`
/// node, bob's on the `us` node. Each is served in its own region, so the room spans both
/// nodes and each decodes the other's video through the relay link.
#[test]
fn two_browsers_in_two_regions_see_each_other_through_the_cascade() -> anyhow::Result<()> {
    let Some(browser) = browser_driver::setup()? else {
        return Ok(());
    };
    let nats = tests::nats::NatsServer::start()?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let coordinator = coordinator::spawn(coordinator::Config::local(nats.coordinator_url()))?;
    let nodes = [("eu-1", "eu"), ("us-1", "us")]
        .iter()
        .map(|(id, region)| {
            let mut c = node::Config::local_dev();
            c.node_id = protocol::NodeId::new(*id).expect("a valid id");
            c.region = (*region).into();
            c.nats_url = Some(nats.node_url(id)?);
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
    let outcome = run_driver(&browser, &bases, false, "browser_cascade.png");
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
