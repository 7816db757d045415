//! The media engine against real clients: one UDP socket carries every peer connection of a
//! node process; connections from one client address are told apart (by ufrag, then by
//! address); stray and forged datagrams harm nobody.

use chaos::{Client, ClientConfig, PublishOpts};
use protocol::signal::TrackKind;
use std::collections::HashSet;
use std::net::{IpAddr, Ipv4Addr, UdpSocket};
use tests::procs::{ProcSpec, Procs};
use tests::{assert_delivery, join, room_name, start_node, wait_media, wait_until, MEDIA_WAIT};

const NODE_BIN: &str = env!("CARGO_BIN_EXE_cluster-node");
const COORDINATOR_BIN: &str = env!("CARGO_BIN_EXE_cluster-coordinator");

/// The inodes of the UDP sockets (IPv4 and IPv6) open on this machine, by `/proc/net`.
fn udp_inodes() -> HashSet<u64> {
    let mut out = HashSet::new();
    for table in ["/proc/net/udp", "/proc/net/udp6"] {
        let Ok(text) = std::fs::read_to_string(table) else {
            continue;
        };
        for line in text.lines().skip(1) {
            // sl local rem st tx:rx tr:tm retrnsmt uid timeout inode ...
            if let Some(inode) = line.split_whitespace().nth(9).and_then(|s| s.parse().ok()) {
                out.insert(inode);
            }
        }
    }
    out
}

/// How many UDP sockets process `pid` holds open (descriptors duplicated from one socket
/// count once: the engine's receiver and senders share the socket).
fn udp_sockets_of(pid: u32) -> anyhow::Result<usize> {
    let udp = udp_inodes();
    let mut mine = HashSet::new();
    for fd in std::fs::read_dir(format!("/proc/{pid}/fd"))? {
        let Ok(target) = std::fs::read_link(fd?.path()) else {
            continue;
        };
        let t = target.to_string_lossy();
        if let Some(inode) = t
            .strip_prefix("socket:[")
            .and_then(|s| s.strip_suffix(']'))
            .and_then(|s| s.parse::<u64>().ok())
        {
            if udp.contains(&inode) {
                mine.insert(inode);
            }
        }
    }
    Ok(mine.len())
}

fn video_only(pps: u32) -> PublishOpts {
    PublishOpts {
        audio: false,
        video_pps: pps,
        ..PublishOpts::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_participants_share_one_udp_socket() -> anyhow::Result<()> {
    let p = Procs::start(ProcSpec::new(NODE_BIN, COORDINATOR_BIN, &[("n1", "eu")])).await?;
    let pid = p
        .cluster
        .pids()
        .into_iter()
        .find(|(id, _)| id == "n1")
        .map(|(_, pid)| pid)
        .expect("the node's pid");
    let idle = udp_sockets_of(pid)?;
    assert_eq!(idle, 1, "an idle node holds exactly its media socket");

    let room = room_name("onesocket");
    let url = p.ws_url("n1");
    let mut clients = Vec::new();
    for i in 0..50 {
        let user = format!("u{i:02}");
        let c = Client::connect(&url).await?;
        c.join(&room, &p.token(&room, &user)).await?;
        clients.push((user, c));
    }
    // Two publish (a peer connection each way); the other 48 only receive.
    for (_, c) in &clients[..2] {
        c.publish(video_only(30)).await?;
    }
    let publishers = [clients[0].0.clone(), clients[1].0.clone()];
    for (user, c) in &clients {
        let from: Vec<&str> = publishers
            .iter()
            .filter(|p| *p != user)
            .map(String::as_str)
            .collect();
        wait_until(MEDIA_WAIT, "video from every publisher", || async {
            let stats = c.track_stats();
            for p in &from {
                let got: u64 = stats
                    .iter()
                    .filter(|t| t.publisher == *p && t.kind == TrackKind::Video)
                    .map(|t| t.received)
                    .sum();
                if got < 30 {
                    return Err(format!("{user}: {got} video packets from {p}"));
                }
            }
            Ok(())
        })
        .await?;
    }
    let snap = p.snapshot("n1").await?;
    let transports = snap["counters"]["transports"].as_i64().unwrap_or(0);
    assert!(
        transports >= 52,
        "50 subscriber and 2 publisher connections: {}",
        snap["counters"]
    );
    assert_eq!(
        udp_sockets_of(pid)?,
        1,
        "{transports} peer connections on one UDP socket"
    );
    for (user, c) in &clients {
        assert_delivery(user, c);
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_from_one_address_are_told_apart_and_strays_harm_nobody() -> anyhow::Result<()>
{
    let node = start_node(|_| {});
    let room = room_name("demux");
    let media_port = node.media_udp_addr().port();
    // Two clients on one address (their sockets differ by port only), each publishing and
    // receiving: four connections from 127.0.0.77.
    let shared_ip = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 77));
    let config = ClientConfig {
        bind_ip: shared_ip,
        ..ClientConfig::default()
    };
    let mut clients = Vec::new();
    for user in ["ann", "ben"] {
        let c = Client::connect_with(&node.ws_url(), config.clone()).await?;
        c.join(&room, &tests::mint(&node, &tests::claims(&room, user, 600)))
            .await?;
        c.publish(PublishOpts::default()).await?;
        clients.push(c);
    }
    wait_media(&clients[0], &["ben"], 100).await?;
    wait_media(&clients[1], &["ann"], 100).await?;

    // A third participant elsewhere receives both, while strays and forgeries arrive.
    let carl = join(&node, &room, "carl").await?;
    wait_media(&carl, &["ann", "ben"], 50).await?;
    let before = node.counters();
    let stray = UdpSocket::bind((Ipv4Addr::new(127, 0, 0, 78), 0))?;
    let target = (Ipv4Addr::LOCALHOST, media_port);
    let mut forged_ufrag = vec![0x00, 0x01, 0x00, 0x1c, 0x21, 0x12, 0xA4, 0x42];
    forged_ufrag.extend_from_slice(&[9; 12]);
    // USERNAME "00000000000001XXXXXXXX:evil" names worker 0, connection 1.
    let username = b"00000000000001XXXXXXXX:evil\0";
    forged_ufrag.extend_from_slice(&[0x00, 0x06, 0x00, 27]);
    forged_ufrag.extend_from_slice(username);
    let datagrams: Vec<Vec<u8>> = vec![
        vec![],
        vec![0xff; 40],
        // DTLS-looking, RTP-looking and RTCP-looking garbage from an unknown address.
        vec![22, 254, 253, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1],
        [vec![0x80, 96, 0, 1, 0, 0, 0, 0, 1, 2, 3, 4], vec![7; 1200]].concat(),
        vec![0x80, 200, 0, 6, 1, 2, 3, 4],
        // A binding request naming a connection, without valid integrity.
        forged_ufrag,
    ];
    for _ in 0..50 {
        for d in &datagrams {
            let _ = stray.send_to(d, target);
        }
    }
    // Everyone keeps receiving everyone: media flows on after the strays.
    let received = |c: &Client| -> u64 { c.track_stats().iter().map(|t| t.received).sum() };
    let marks: Vec<u64> = [&clients[0], &clients[1], &carl]
        .iter()
        .map(|c| received(c))
        .collect();
    wait_until(MEDIA_WAIT, "media to flow on after the strays", || async {
        for (c, mark) in [&clients[0], &clients[1], &carl].iter().zip(&marks) {
            let now = received(c);
            if now < mark + 100 {
                return Err(format!("{now} < {mark} + 100"));
            }
        }
        Ok(())
    })
    .await?;
    let after = node.counters();
    assert!(
        after.engine_unroutable >= before.engine_unroutable + 200,
        "strays are counted as unroutable: {} → {}",
        before.engine_unroutable,
        after.engine_unroutable
    );
    for (who, c) in [("ann", &clients[0]), ("ben", &clients[1]), ("carl", &carl)] {
        assert_delivery(who, c);
    }
    // The forged binding requests taught the node nothing: what the stray address sends
    // now still reaches no connection.
    let mark = node.counters().engine_unroutable;
    for _ in 0..10 {
        let _ = stray.send_to(&datagrams[2], target);
    }
    wait_until(
        MEDIA_WAIT,
        "later strays to be counted unroutable",
        || async {
            let now = node.counters().engine_unroutable;
            if now >= mark + 10 {
                Ok(())
            } else {
                Err(format!("{now} < {mark} + 10"))
            }
        },
    )
    .await?;
    assert_eq!(node.counters().peers, 3);
    Ok(())
}
