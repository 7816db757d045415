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
    let screenshot = browser_driver::screenshot_path(screenshot_name);
    eprintln!("pages at {bases:?}; running the browser driver (screenshot: {screenshot})");
    let resume =
        std::env::var("E2E_RESUME").unwrap_or_else(|_| if resume { "1" } else { "0" }.into());
    let driver = Driver::spawn(
        browser,
        "demo.e2e.mjs",
        bases,
        &[("E2E_SCREENSHOT", screenshot), ("E2E_RESUME", resume)],
    )?;
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
