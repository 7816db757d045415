//! A node watches the directory entries of the rooms it hosts, not the whole `rooms`
//! bucket (`node::actors::rooms::watch`), with real processes: a stored write that moves a
//! room on without the node fences it there; a write the stream refused, though published
//! on the key's subject, does not; a write missed while the node was disconnected is read
//! once it is back; and the node's watches end with its rooms.

use async_nats::jetstream;
use chaos::impair::{Impairment, Link, TcpProxy};
use chaos::Client;
use protocol::cluster::{self as wire, RoomAssignment, RoomNode};
use protocol::signal::ServerMessage;
use protocol::NodeId;
use std::time::Duration;
use tests::procs::{ProcSpec, Procs};
use tests::{room_name, wait_until};

const NODE: &str = env!("CARGO_BIN_EXE_cluster-node");
const COORDINATOR: &str = env!("CARGO_BIN_EXE_cluster-coordinator");
const WAIT: Duration = Duration::from_secs(30);

/// `name` on `node`'s `/metrics`, with `label` (`key="value"`) if given; 0 when absent.
async fn metric(p: &Procs, node: &str, name: &str, label: Option<&str>) -> Result<f64, String> {
    let proc = p.cluster.node(node).map_err(|e| e.to_string())?;
    let text = proc.http_get("/metrics").await.map_err(|e| e.to_string())?;
    Ok(chaos::bench::metric(&text, name, label).unwrap_or(0.0))
}

async fn wait_metric(
    p: &Procs,
    node: &str,
    name: &str,
    label: Option<&str>,
    want: f64,
) -> anyhow::Result<()> {
    let what = format!("{name} {label:?} = {want} on {node}");
    wait_until(WAIT, &what, || async {
        match metric(p, node, name, label).await? {
            v if v == want => Ok(()),
            v => Err(format!("{v}")),
        }
    })
    .await
}

/// The room's entry and its revision, read as the admin.
async fn entry_of(p: &Procs, room: &str) -> anyhow::Result<(RoomAssignment, u64)> {
    let admin = chaos::sandbox::nats_connect(p.cluster.nats_url()).await?;
    let kv = jetstream::new(admin)
        .get_key_value(wire::ROOMS_BUCKET)
        .await?;
    let e = kv.entry(wire::token(room)).await?;
    let e = e.ok_or_else(|| anyhow::anyhow!("{room} has no entry"))?;
    Ok((serde_json::from_slice(&e.value)?, e.revision))
}

/// The room's entry moved to `to` (in `region`) alone, one epoch on.
fn moved(a: &RoomAssignment, to: &str, region: &str) -> anyhow::Result<Vec<u8>> {
    let to = NodeId::new(to)?;
    let next = RoomAssignment {
        node: to.clone(),
        epoch: a.epoch + 1,
        coordinator: "test".into(),
        nodes: vec![RoomNode {
            node: to,
            region: region.into(),
        }],
        ..a.clone()
    };
    Ok(serde_json::to_vec(&next)?)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stored_write_fences_a_room_a_refused_one_does_not() -> anyhow::Result<()> {
    // n1 is the only node in `eu`: both rooms live there.
    let mut spec = ProcSpec::new(NODE, COORDINATOR, &[("n1", "eu"), ("n2", "us")])
        .node_flag("--room-empty-grace-secs=0");
    spec.coordinators = 1;
    // nextest runs each test in a process of its own: media ports apart from the other's.
    spec.udp_base = 29_000;
    let p = Procs::start(spec).await?;
    let (kept, fenced) = (room_name("kept"), room_name("fenced"));
    let a = Client::connect(&p.ws_url("n1")).await?;
    a.join_in_region(&kept, &p.token(&kept, "a"), "eu").await?;
    let b = Client::connect(&p.ws_url("n1")).await?;
    b.join_in_region(&fenced, &p.token(&fenced, "b"), "eu")
        .await?;
    for c in [&a, &b] {
        assert_eq!(c.joined().expect("joined").node.as_str(), "n1");
    }
    // Each room's entry is watched (subscribed and read once).
    wait_metric(&p, "n1", "node_room_watches", None, 2.0).await?;

    let admin = chaos::sandbox::nats_connect(p.cluster.nats_url()).await?;
    let js = jetstream::new(admin);
    let kv = js.get_key_value(wire::ROOMS_BUCKET).await?;

    // A coordinator's compare-and-swap that lost: a newer epoch without n1, expecting a
    // revision the key is no longer at. The stream refuses it; the message still reaches
    // whoever listens on the key's subject, n1 included. Before it, a body that is no
    // entry, refused likewise.
    let (kept_entry, kept_revision) = entry_of(&p, &kept).await?;
    assert!(kept_entry.serves(&NodeId::new("n1")?), "{kept_entry:?}");
    let subject = format!("$KV.rooms.{}", wire::token(&kept));
    let mut stale = async_nats::HeaderMap::new();
    let revision = kept_revision.saturating_sub(1).to_string();
    stale.insert("Nats-Expected-Last-Subject-Sequence", revision.as_str());
    let losing = moved(&kept_entry, "n2", "us")?;
    for body in [b"not an entry".to_vec(), losing] {
        let ack = js
            .publish_with_headers(subject.clone(), stale.clone(), body.into())
            .await?
            .await;
        assert!(ack.is_err(), "the stream stored a losing write: {ack:?}");
    }
    assert_eq!(entry_of(&p, &kept).await?.1, kept_revision, "the key moved");
    // n1 reads the entry back and finds the write refused (or, wrongly, fences the room).
    wait_until(WAIT, "n1 to settle the refused write", || async {
        let refused = Some("outcome=\"refused\"");
        let settled = metric(&p, "n1", "node_room_watch_hints_total", refused).await?;
        let fenced = metric(&p, "n1", "node_fenced_total", None).await?;
        if settled >= 1.0 || fenced >= 1.0 {
            Ok(())
        } else {
            Err(format!("{settled} refused, {fenced} fenced"))
        }
    })
    .await?;
    assert_eq!(
        metric(&p, "n1", "node_fenced_total", None).await,
        Ok(0.0),
        "n1 fenced a room on a write the stream refused"
    );

    // A stored write moving the other room to n2: n1 fences that one.
    let (fenced_entry, fenced_revision) = entry_of(&p, &fenced).await?;
    let body = moved(&fenced_entry, "n2", "us")?;
    kv.update(wire::token(&fenced), body.into(), fenced_revision)
        .await?;
    let superseded = Some("cause=\"superseded\"");
    wait_metric(&p, "n1", "node_fenced_total", superseded, 1.0).await?;
    let told = b
        .wait_for(WAIT, |m| matches!(m, ServerMessage::Reconnect { .. }))
        .await?;
    assert!(
        matches!(&told, ServerMessage::Reconnect { reason, .. } if reason == "fenced"),
        "{told:?}"
    );

    // The first room is still served on n1, with its member, and nothing else was fenced.
    let rooms = p.rooms_on("n1").await?;
    assert_eq!(rooms, vec![(kept.clone(), vec!["a".to_owned()])]);
    assert_eq!(metric(&p, "n1", "node_fenced_total", None).await, Ok(1.0));
    assert!(
        !a.messages()
            .iter()
            .any(|m| matches!(m, ServerMessage::Reconnect { .. })),
        "a was sent away"
    );
    wait_metric(&p, "n1", "node_room_watches", None, 1.0).await?;

    // Once everyone has left, n1 watches nothing.
    a.leave().await?;
    wait_metric(&p, "n1", "node_room_watches", None, 0.0).await?;
    wait_until(WAIT, "n1 to close its rooms", || async {
        match p.rooms_on("n1").await {
            Ok(rooms) if rooms.is_empty() => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_missed_while_disconnected_is_read_after_the_reconnection() -> anyhow::Result<()> {
    // n1 reaches NATS through a proxy that can hold and cut its connection.
    let nats_port = chaos::bench::free_port()?;
    let link = Link::new(Impairment::default());
    let to = ([127, 0, 0, 1], nats_port).into();
    let proxy = TcpProxy::start("127.0.0.1:0".parse()?, to, link.clone()).await?;
    let mut spec = ProcSpec::new(NODE, COORDINATOR, &[("n1", "eu"), ("n2", "us")])
        .node_flag("--room-empty-grace-secs=0");
    spec.coordinators = 1;
    spec.udp_base = 29_400;
    spec.nats_port = Some(nats_port);
    spec.node_nats = vec![("n1".into(), format!("nats://{}", proxy.local_addr()))];
    let p = Procs::start(spec).await?;
    let room = room_name("missed");
    let a = Client::connect(&p.ws_url("n1")).await?;
    a.join_in_region(&room, &p.token(&room, "a"), "eu").await?;
    assert_eq!(a.joined().expect("joined").node.as_str(), "n1");
    wait_metric(&p, "n1", "node_room_watches", None, 1.0).await?;

    // The room moves to n2 while n1's connection is held; then the connection is cut, and
    // the write never reaches n1 on the key's subject. Far shorter than the node timeout:
    // no coordinator finds n1 dead, and n1 does not find itself cut off.
    let (entry, revision) = entry_of(&p, &room).await?;
    let admin = chaos::sandbox::nats_connect(p.cluster.nats_url()).await?;
    let kv = jetstream::new(admin)
        .get_key_value(wire::ROOMS_BUCKET)
        .await?;
    link.partition(true);
    kv.update(
        wire::token(&room),
        moved(&entry, "n2", "us")?.into(),
        revision,
    )
    .await?;
    link.cut();
    link.partition(false);

    // Back, n1 reads its rooms' entries again and fences this one.
    let superseded = Some("cause=\"superseded\"");
    wait_metric(&p, "n1", "node_fenced_total", superseded, 1.0).await?;
    let told = a
        .wait_for(WAIT, |m| matches!(m, ServerMessage::Reconnect { .. }))
        .await?;
    assert!(
        matches!(&told, ServerMessage::Reconnect { reason, .. } if reason == "fenced"),
        "{told:?}"
    );
    wait_metric(&p, "n1", "node_room_watches", None, 0.0).await?;
    drop(proxy);
    Ok(())
}
