//! The demo page survives the death of its room's node, in real browsers and real processes:
//! a cluster of child processes (nats-server, two coordinators, three `eu` nodes with dev
//! tokens), alice's page opened from n1 and bob's from n2 (so their sockets are on different
//! nodes), one room. Once each decodes the other's video the room's node is killed with
//! SIGKILL, and without any click both pages must be joined again and decode each other's
//! video, as PROTOCOL.md "What a client should do when something breaks" says: a page whose
//! socket died with the node finds a live one through `joined.fallback_urls`, a page whose
//! socket survived is told to `reconnect`, and both `resume` (or, refused, join afresh).
//! Then the room's new node is killed too, so that one of the two kills takes a page's own
//! node (placement tends to put the room on the idle n3 first).
//!
//! `tests/browser/failover.e2e.mjs` drives the pages and says when they are ready; this side
//! owns the processes and kills the node. Needs what `browser_demo` needs (Chromium, Node.js);
//! `SKIP_BROWSER_TESTS=1` skips it. The two tests take turns: two pairs of Chromiums and two
//! clusters at once are too much for a small machine.

mod browser_driver;

use anyhow::{ensure, Context};
use browser_driver::Driver;
use protocol::NodeId;
use std::sync::Mutex;
use std::time::Duration;
use tests::procs::{ProcSpec, Procs};

const NODE: &str = env!("CARGO_BIN_EXE_cluster-node");
const COORDINATOR: &str = env!("CARGO_BIN_EXE_cluster-coordinator");

/// Two Chromium starts, a join and media through a debug build (the driver's own deadline
/// for media is 90 s).
const READY_TIMEOUT: Duration = Duration::from_secs(240);
/// From the kill to the driver's result: its recovery deadline is 90 s, then screenshots
/// and closing the browsers.
const DRIVER_TIMEOUT: Duration = Duration::from_secs(240);

/// The room's node is killed twice: the pages' sockets are on n1 and n2, so one of the two
/// kills takes a page's own node, whichever node the room starts on.
const KILLS: usize = 2;

static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

/// Kills the node that hosts the pages' room once media flows, and checks that both pages
/// came back by themselves. `rejoin`: pages (`alice`, `bob`) whose resume token is spoiled
/// first, so that the node refuses their `resume` and they must join afresh.
fn pages_survive_the_kill_of_their_rooms_node(
    rejoin: &str,
    screenshot: &str,
) -> anyhow::Result<()> {
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let Some(browser) = browser_driver::setup()? else {
        return Ok(());
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let spec = ProcSpec::new(
        NODE,
        COORDINATOR,
        &[("n1", "eu"), ("n2", "eu"), ("n3", "eu")],
    )
    .node_flag("--dev-tokens")
    .node_flag("--resume-grace-secs=20");
    let mut procs = rt.block_on(Procs::start(spec))?;
    let outcome = kill_and_watch(&rt, &mut procs, &browser, rejoin, screenshot);
    if outcome.is_err() {
        eprintln!("{}", procs.cluster.log_tails(40));
    }
    outcome
}

fn kill_and_watch(
    rt: &tokio::runtime::Runtime,
    procs: &mut Procs,
    browser: &browser_driver::Browser,
    rejoin: &str,
    screenshot: &str,
) -> anyhow::Result<()> {
    let base = |id: &str| -> anyhow::Result<String> {
        Ok(format!(
            "http://127.0.0.1:{}/",
            procs.cluster.node(id)?.port()
        ))
    };
    let bases = vec![base("n1")?, base("n2")?];
    eprintln!(
        "alice's page from n1 ({}), bob's from n2 ({})",
        bases[0], bases[1]
    );
    let mut driver = Driver::spawn(
        browser,
        "failover.e2e.mjs",
        &bases,
        &[
            ("E2E_KILLS", KILLS.to_string()),
            ("E2E_REJOIN", rejoin.to_owned()),
            (
                "E2E_SCREENSHOT",
                browser_driver::screenshot_path(screenshot),
            ),
        ],
    )?;
    // Per kill: the node, whether a page's socket was on it, and the room's entry before.
    let mut kills = Vec::new();
    for round in 1..=KILLS {
        let Some(ready) = driver.wait_event("ready", READY_TIMEOUT) else {
            driver.finish(DRIVER_TIMEOUT)?;
            anyhow::bail!("the driver finished without saying the pages were ready ({round})");
        };
        let room = ready["room"]
            .as_str()
            .context("ready names the room")?
            .to_owned();
        let host = ready["nodes"]["alice"]
            .as_str()
            .context("alice's node")?
            .to_owned();
        ensure!(
            ready["nodes"]["bob"] == host.as_str(),
            "the pages' media is on two nodes, so no single node is the room's: {ready}"
        );
        let before = rt
            .block_on(procs.assignment(&room))?
            .context("the room is in the directory")?;
        ensure!(
            before.serves(&NodeId::new(host.as_str())?),
            "the pages say {host} hosts {room}, the directory says {before:?}"
        );
        let host_url = procs.ws_url(&host);
        let sockets: Vec<&str> = ["alice", "bob"]
            .into_iter()
            .filter(|who| ready["urls"][*who] == host_url.as_str())
            .collect();
        eprintln!(
            "kill {round}: room {room} is on {host}, where the sockets of [{}] are; killing it",
            sockets.join(", ")
        );
        procs.signal(&host, "KILL")?;
        driver.send_line(&format!("killed {host}"))?;
        kills.push((room, host, !sockets.is_empty(), before));
    }
    let result = driver.finish(DRIVER_TIMEOUT)?;

    for (i, (room, host, _, before)) in kills.iter().enumerate() {
        let kill = &result["kills"][i];
        eprintln!(
            "kill {}: both pages decode each other again {} ms after the kill of {host}",
            i + 1,
            kill["recovery_ms"]
        );
        for who in ["alice", "bob"] {
            let page = &kill["pages"][who];
            eprintln!(
                "   {who}: {} -> {}, socket {} -> {}; joined again after {} ms, decoding after {} ms; {}",
                page["node_before"],
                page["node_after"],
                page["url_before"],
                page["url_after"],
                page["joined_again_ms"],
                page["decoding_again_ms"],
                page["recovery"]
            );
            let frames = page["from_other"]["video"]["framesDecoded"]
                .as_u64()
                .unwrap_or(0);
            ensure!(frames > 0, "{who} decodes no video after the kill: {page}");
            ensure!(
                page["node_after"] != host.as_str(),
                "{who} is still on {host}: {page}"
            );
        }
        let after = rt
            .block_on(procs.assignment(room))?
            .context("the room is still in the directory")?;
        ensure!(
            !after.serves(&NodeId::new(host.as_str())?),
            "the killed node still serves the room: {after:?}"
        );
        ensure!(after.epoch > before.epoch, "{before:?} -> {after:?}");
    }
    // The sockets are on n1 and n2 and two of the three nodes die, so at least once a page
    // lost its own node (its socket and the origin of the page) and had to find another
    // through `joined.fallback_urls`.
    ensure!(
        kills.iter().any(|(_, _, on_socket, _)| *on_socket),
        "no kill took a page's own node: {kills:?}"
    );
    Ok(())
}

#[test]
fn two_pages_resume_by_themselves_when_their_rooms_node_is_killed() -> anyhow::Result<()> {
    pages_survive_the_kill_of_their_rooms_node("", "browser_failover.png")
}

/// The same, but the node refuses bob's `resume` (his token is spoiled): his page must join
/// afresh with a new token, through a node that is alive.
#[test]
fn a_page_whose_resume_is_refused_joins_afresh_after_its_rooms_node_is_killed() -> anyhow::Result<()>
{
    pages_survive_the_kill_of_their_rooms_node("bob", "browser_failover_rejoin.png")
}
