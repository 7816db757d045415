//! Geography on loopback with real sockets: a region's clients reach its node untouched,
//! other regions pay the pair's delay both ways, a partition cuts one pair only, and a
//! non-home region's NATS goes through its link. Lower bounds on latency are strict; upper
//! bounds only catch a path that was impaired when it should not be.

use chaos::geo::GeoNet;
use chaos::wait_until;
use std::io::ErrorKind;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};

const WAIT: Duration = Duration::from_secs(10);
const DELAY: Duration = Duration::from_millis(25);

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn geo() -> GeoNet {
    GeoNet::new(&["eu", "us", "ap"], DELAY, Duration::ZERO, 11).unwrap()
}

/// A UDP echo server on node `k` of `region`'s bind address, with its gateway; returns the
/// announced address clients send to. Retries when another test holds the gateway's port.
async fn echo_node(geo: &mut GeoNet, region: &str, k: u8) -> SocketAddr {
    let (bind, announce) = geo.node_ips(region, k).unwrap();
    for _ in 0..20 {
        let socket = UdpSocket::bind((bind, 0)).await.unwrap();
        let port = socket.local_addr().unwrap().port();
        match geo.add_node(region, k, (port, port)).await {
            Ok(()) => {
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 65_536];
                    while let Ok((len, from)) = socket.recv_from(&mut buf).await {
                        let _ = socket.send_to(&buf[..len], from).await;
                    }
                });
                return SocketAddr::new(announce, port);
            }
            Err(e) if e.kind() == ErrorKind::AddrInUse => continue,
            Err(e) => panic!("gateway for {region}:{k}: {e}"),
        }
    }
    panic!("no free gateway port for {region}:{k}");
}

async fn client_at(ip: IpAddr) -> UdpSocket {
    UdpSocket::bind((ip, 0)).await.unwrap()
}

/// One echoed round trip of a fresh payload, or `None` if the echo does not come back
/// within `within`. Stale echoes of earlier payloads are skipped.
async fn round_trip(socket: &UdpSocket, to: SocketAddr, within: Duration) -> Option<Duration> {
    let payload: [u8; 8] = rand::random();
    let sent = Instant::now();
    socket.send_to(&payload, to).await.unwrap();
    let mut buf = vec![0u8; 65_536];
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match tokio::time::timeout_at(deadline, socket.recv_from(&mut buf)).await {
            Ok(Ok((len, _))) if buf[..len] == payload => return Some(sent.elapsed()),
            Ok(Ok(_)) => continue,
            _ => return None,
        }
    }
}

async fn round_trips(socket: &UdpSocket, to: SocketAddr, n: usize) -> Vec<Duration> {
    let mut rtts = Vec::with_capacity(n);
    for _ in 0..n {
        rtts.push(round_trip(socket, to, WAIT).await.expect("an echo"));
    }
    rtts.sort();
    rtts
}

#[tokio::test]
async fn a_regions_own_clients_reach_its_node_unimpaired() {
    let mut geo = geo();
    let node = echo_node(&mut geo, "eu", 0).await;
    let local = client_at(geo.client_ip("eu", 0).unwrap()).await;
    let unplanned = client_at("127.0.0.1".parse().unwrap()).await;
    // They pass through no link: no pair's counters move (a speed check would flake on a
    // busy machine; the counters say which path was taken).
    for client in [&local, &unplanned] {
        round_trips(client, node, 10).await;
    }
    for pair in geo.stats() {
        let (f, r) = (pair.link.forward, pair.link.reverse);
        assert_eq!((f.handled(), r.handled()), (0, 0), "{}-{}", pair.a, pair.b);
    }
}

#[tokio::test]
async fn other_regions_pay_the_pair_delay_both_ways() {
    let mut geo = geo();
    let node = echo_node(&mut geo, "eu", 0).await;
    let client = client_at(geo.client_ip("us", 3).unwrap()).await;
    // A relay link: the us node's media socket reaching the eu node.
    let us_node = client_at(geo.node_ips("us", 0).unwrap().0).await;
    for socket in [&client, &us_node] {
        let rtts = round_trips(socket, node, 5).await;
        assert!(rtts[0] >= 2 * DELAY, "fastest round trip {:?}", rtts[0]);
    }
    let eu_us = geo.link("eu", "us").unwrap().stats();
    assert_eq!((eu_us.forward.packets, eu_us.reverse.packets), (10, 10));
    for (a, b) in [("eu", "ap"), ("us", "ap")] {
        let idle = geo.link(a, b).unwrap().stats();
        assert_eq!(
            idle.forward.handled() + idle.reverse.handled(),
            0,
            "{a}-{b}"
        );
    }
}

#[tokio::test]
async fn a_partition_cuts_one_pair_until_healed() {
    let mut geo = geo();
    let node = echo_node(&mut geo, "us", 0).await;
    let eu = client_at(geo.client_ip("eu", 0).unwrap()).await;
    let ap = client_at(geo.client_ip("ap", 0).unwrap()).await;
    let us = client_at(geo.client_ip("us", 0).unwrap()).await;
    for client in [&eu, &ap, &us] {
        round_trips(client, node, 1).await;
    }

    assert!(geo.partition("eu", "us", true));
    for _ in 0..5 {
        eu.send_to(b"cut", node).await.unwrap();
    }
    let eu_us = geo.link("us", "eu").unwrap().clone();
    wait_until(WAIT, "the partition to drop all 5", || async {
        let dropped = eu_us.stats().forward.dropped_partition;
        (dropped == 5)
            .then_some(())
            .ok_or(format!("{dropped} dropped"))
    })
    .await
    .unwrap();
    assert_eq!(round_trip(&eu, node, ms(300)).await, None);
    round_trips(&ap, node, 2).await;
    round_trips(&us, node, 2).await;

    assert!(geo.partition("us", "eu", false));
    wait_until(WAIT, "eu to reach us again", || async {
        round_trip(&eu, node, ms(500))
            .await
            .map(|_| ())
            .ok_or_else(|| "no echo".to_string())
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn a_failed_gateway_leaves_nothing_behind_and_can_be_retried() {
    let mut geo = geo();
    let (_, announce) = geo.node_ips("ap", 2).unwrap();
    let blocker = UdpSocket::bind((announce, 0)).await.unwrap();
    let port = blocker.local_addr().unwrap().port();
    let err = geo.add_node("ap", 2, (port, port)).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::AddrInUse);
    drop(blocker);
    geo.add_node("ap", 2, (port, port)).await.unwrap();
    let again = geo.add_node("ap", 2, (port, port)).await.unwrap_err();
    assert_eq!(again.kind(), ErrorKind::AlreadyExists);
}

/// A TCP server that echoes every connection.
async fn tcp_echo() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let (mut read, mut write) = stream.split();
                let _ = tokio::io::copy(&mut read, &mut write).await;
            });
        }
    });
    addr
}

async fn tcp_round_trip(stream: &mut TcpStream, within: Duration) -> Option<Duration> {
    let sent = Instant::now();
    stream.write_all(b"ping").await.unwrap();
    let mut buf = [0u8; 4];
    match tokio::time::timeout(within, stream.read_exact(&mut buf)).await {
        Ok(Ok(_)) if &buf == b"ping" => Some(sent.elapsed()),
        Ok(other) => panic!("echo broke: {other:?} {buf:?}"),
        Err(_) => None,
    }
}

fn url_addr(url: &str) -> SocketAddr {
    url.strip_prefix("nats://")
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("not a nats url: {url}"))
}

#[tokio::test]
async fn a_remote_regions_nats_crosses_its_link_to_home() {
    let nats = tcp_echo().await;
    let mut geo = geo();
    assert_eq!(
        geo.nats_url("eu", nats).await.unwrap(),
        format!("nats://{nats}")
    );
    let us_url = geo.nats_url("us", nats).await.unwrap();
    assert_eq!(geo.nats_url("us", nats).await.unwrap(), us_url, "made once");
    assert_ne!(geo.nats_url("ap", nats).await.unwrap(), us_url);

    let mut us = TcpStream::connect(url_addr(&us_url)).await.unwrap();
    let rtt = tcp_round_trip(&mut us, WAIT).await.expect("an echo");
    assert!(rtt >= 2 * DELAY, "round trip {rtt:?}");

    // A partition between us and ap leaves us's NATS alone; one with home stalls it.
    assert!(geo.partition("us", "ap", true));
    tcp_round_trip(&mut us, WAIT).await.expect("an echo");
    assert!(geo.partition("eu", "us", true));
    assert_eq!(tcp_round_trip(&mut us, ms(300)).await, None);
    assert!(geo.partition("eu", "us", false));
    let mut buf = [0u8; 4];
    tokio::time::timeout(WAIT, us.read_exact(&mut buf))
        .await
        .expect("the held bytes arrive after healing")
        .unwrap();
    assert_eq!(&buf, b"ping");
}
