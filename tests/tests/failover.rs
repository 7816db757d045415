//! Failover with real processes: nodes killed with SIGKILL, stopped with SIGSTOP, cut off
//! from NATS, drained with SIGTERM; clients recover as PROTOCOL.md says, and the directory
//! never shows two nodes owning a room at one epoch.

use chaos::{Client, PublishOpts};
use protocol::signal::ServerMessage;
use std::time::Duration;
use tests::procs::{ProcSpec, Procs};
use tests::{room_name, wait_media, wait_until};

const NODE: &str = env!("CARGO_BIN_EXE_cluster-node");
const COORDINATOR: &str = env!("CARGO_BIN_EXE_cluster-coordinator");
const WAIT: Duration = Duration::from_secs(30);

fn spec(nodes: &[(&str, &str)]) -> ProcSpec {
    ProcSpec::new(NODE, COORDINATOR, nodes)
        .node_flag("--resume-grace-secs=20")
        .node_flag("--room-empty-grace-secs=1")
}

/// Joins `room` as `user` through `node` and publishes audio and video.
async fn publisher(p: &Procs, node: &str, room: &str, user: &str) -> anyhow::Result<Client> {
    let c = Client::connect(&p.ws_url(node)).await?;
    c.join(room, &p.token(room, user)).await?;
    c.publish(PublishOpts::default()).await?;
    Ok(c)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn participants_of_a_killed_node_resume_elsewhere() -> anyhow::Result<()> {
    let mut p = Procs::start(spec(&[("n1", "eu"), ("n2", "eu"), ("n3", "eu")])).await?;
    let room = room_name("kill");
    // a's socket is on n1, b's on n2; the room lives on one of them (or on n3).
    let a = publisher(&p, "n1", &room, "a").await?;
    let b = publisher(&p, "n2", &room, "b").await?;
    wait_media(&a, &["b"], 20).await?;
    wait_media(&b, &["a"], 20).await?;
    let host = a.joined().expect("joined").node.to_string();
    let before = p.assignment(&room).await?.expect("room assigned");
    p.signal(&host, "KILL")?;

    // Whoever's socket was on the dead node lost it; whoever's socket survived is told to
    // reconnect. Either way the client resumes (here by hand; the participant type of
    // chaos does it by itself) through a live node, and media flows again.
    let mut back = Vec::new();
    for (user, c) in [("a", &a), ("b", &b)] {
        let socket_node = if user == "a" { "n1" } else { "n2" };
        let url = if socket_node == host {
            let fallback = c.joined().expect("joined").fallback_urls;
            fallback.first().cloned().expect("a fallback url")
        } else {
            c.wait_for(WAIT, |m| matches!(m, ServerMessage::Reconnect { .. }))
                .await?;
            p.ws_url(socket_node)
        };
        back.push(c.reconnect(Some(&url)).await?);
    }
    let (a2, b2) = (&back[0], &back[1]);
    wait_media(a2, &["b"], 20).await?;
    wait_media(b2, &["a"], 20).await?;
    let after = p.assignment(&room).await?.expect("room still assigned");
    assert!(!after.serves(&before.node), "{after:?}");
    assert!(after.epoch > before.epoch, "{before:?} -> {after:?}");
    assert_eq!(a2.joined().unwrap().node, after.node);
    Ok(())
}
