//! The demo page over ICE-TCP only, in real browsers: a node runs in-process with dev tokens
//! and ICE-TCP on, and `tests/browser/demo.e2e.mjs` (with `E2E_ICE=tcp`) drives two headless
//! Chromiums whose pages act as behind a firewall that drops UDP: every UDP candidate is
//! hidden from their peer connections, both ways, so the node's passive TCP candidate
//! (RFC 6544, RFC 4571 framing) is the only path. Both join one room and must each decode the
//! other's video and receive the other's audio; each peer connection's selected candidate
//! pair must be TCP to the node's TCP port, and the node must hold an ICE-TCP stream for
//! each of the four peer connections while the pages are in the call.
//!
//! Needs `/usr/bin/chromium` (or `CHROMIUM_PATH`), Node.js and npm (`npm ci` runs in
//! `tests/browser` when its `node_modules` is missing). `SKIP_BROWSER_TESTS=1` skips it.
//! `E2E_SCREENSHOT=<path>` keeps a screenshot of the page (by default it goes to cargo's
//! per-test temporary directory).

mod browser_driver;

use anyhow::{ensure, Context};
use browser_driver::{Browser, Driver};
use serde_json::Value;
use std::time::Duration;

/// Generous: two Chromium starts, ICE/DTLS twice per participant, and a debug-built SFU on a
/// shared 2-core machine. The driver's own deadlines are shorter and say what was missing.
const DRIVER_TIMEOUT: Duration = Duration::from_secs(300);
/// Until the driver says media flows both ways: its own media deadline (90 s) and the
/// joins, with room to spare.
const MEDIA_TIMEOUT: Duration = Duration::from_secs(180);
/// Publisher and subscriber, per page: each is its own ICE-TCP stream to the node.
const PEER_CONNECTIONS: i64 = 4;

/// Checks one page's peer connection as the driver saw it: connected, every candidate pair
/// TCP, and the selected one from a TCP active candidate to the node's passive candidate on
/// its ICE-TCP port, carrying the media (sent by a publisher, received by a subscriber).
///
/// Only the media's direction is checked on the selected pair: when Chromium nominates a
/// second pair of a connection (it opens one TCP stream per local candidate), the node keeps
/// sending on the pair it selected first, so the pair Chromium selected may have received
/// nothing (see the pair list in the driver's result).
fn check_tcp_pair(who: &str, which: &str, pc: &Value, tcp_port: u16) -> anyhow::Result<()> {
    ensure!(
        pc["connection"] == "connected",
        "{who}'s {which} connection is not connected: {pc}"
    );
    let pair = &pc["pair"];
    ensure!(
        !pair.is_null(),
        "{who}'s {which} connection has no selected candidate pair: {pc}"
    );
    let pairs = pc["pairs"]
        .as_array()
        .context("the driver lists the pairs")?;
    ensure!(
        pairs
            .iter()
            .all(|p| p.as_str().is_some_and(|p| p.starts_with("tcp "))),
        "{who}'s {which} connection has a candidate pair that is not TCP: {pc}"
    );
    for (end, want_tcp_type) in [("local", "active"), ("remote", "passive")] {
        let c = &pair[end];
        ensure!(
            c["protocol"] == "tcp",
            "{who}'s {which} connection selected a pair whose {end} candidate is not TCP \
             (ICE-TCP did not carry it): {pair}"
        );
        ensure!(
            c["tcpType"] == want_tcp_type,
            "{who}'s {which} connection: the {end} candidate is not tcptype {want_tcp_type}: {pair}"
        );
    }
    ensure!(
        pair["remote"]["port"].as_u64() == Some(u64::from(tcp_port)),
        "{who}'s {which} connection is not paired with the node's ICE-TCP port {tcp_port}: {pair}"
    );
    let media = if which == "publisher" {
        "bytesSent"
    } else {
        "bytesReceived"
    };
    ensure!(
        pair[media].as_u64().unwrap_or(0) > 0,
        "{who}'s {which} connection carried no media on its selected TCP pair ({media} 0): {pc}"
    );
    Ok(())
}

fn run(browser: &Browser, handle: &node::NodeHandle, tcp_port: u16) -> anyhow::Result<()> {
    let base = format!("http://{}", handle.http_addr());
    let screenshot = browser_driver::screenshot_path("browser_ice_tcp.png");
    eprintln!(
        "page at {base}, node ICE-TCP on port {tcp_port}; running the browser driver \
         (screenshot: {screenshot})"
    );
    let mut driver = Driver::spawn(
        browser,
        "demo.e2e.mjs",
        &[base],
        &[
            ("E2E_SCREENSHOT", screenshot),
            ("E2E_RESUME", "0".into()),
            ("E2E_ICE", "tcp".into()),
            ("E2E_HOLD", "1".into()),
        ],
    )?;
    // While both pages are in the call, media flowing both ways: the node's streams.
    let Some(media) = driver.wait_event("media", MEDIA_TIMEOUT) else {
        driver.finish(DRIVER_TIMEOUT)?;
        anyhow::bail!("the driver finished without saying media flows both ways");
    };
    let during = handle.counters();
    eprintln!(
        "media flows; the node has {} ICE-TCP streams open, {} datagrams/frames in, {} out, \
         {} unroutable, {} send-dropped",
        during.engine_tcp_streams,
        during.engine_datagrams_in,
        during.engine_datagrams_out,
        during.engine_unroutable,
        during.engine_send_dropped
    );
    driver.send_line("go on")?;
    let result = driver.finish(DRIVER_TIMEOUT)?;

    // (a) Each page decoded the other's video and received its audio.
    browser_driver::check_media_both_ways(&result)?;
    // (b) Over TCP: every peer connection's candidate pairs, as the pages saw them once media
    // flowed, just before the node was looked at (the result holds the same).
    for who in ["alice", "bob"] {
        let ice = &media["ice"][who];
        for which in ["publisher", "subscriber"] {
            check_tcp_pair(who, which, &ice[which], tcp_port)?;
        }
        let filter = &ice["filter"];
        ensure!(
            filter["remoteUdpDropped"].as_u64().unwrap_or(0) > 0,
            "{who}'s page hid no UDP candidate of the node (is the filter running?): {filter}"
        );
    }
    // (c) The node carried the four peer connections on ICE-TCP streams. (Chromium opens one
    // stream per local TCP candidate, so there are usually two per connection; with UDP
    // allowed it still opens some, which is why (b) is the sharper check.)
    ensure!(
        during.engine_tcp_streams >= PEER_CONNECTIONS,
        "the node held {} ICE-TCP streams while both pages were in the call, expected at \
         least {PEER_CONNECTIONS} (one per peer connection): {during:?}",
        during.engine_tcp_streams
    );
    Ok(())
}

#[test]
fn two_browsers_restricted_to_ice_tcp_see_and_hear_each_other() -> anyhow::Result<()> {
    let Some(browser) = browser_driver::setup()? else {
        return Ok(());
    };
    // `local_dev` has ICE-TCP on a free port; the node says which.
    let handle = node::spawn(node::Config::local_dev()).context("starting the node")?;
    let tcp_port = handle
        .media_tcp_addr()
        .context("the node listens for ICE-TCP")?
        .port();
    let outcome = run(&browser, &handle, tcp_port);
    let after = handle.counters();
    handle.stop();
    eprintln!("node counters at the end: {after:?}");
    outcome
}
