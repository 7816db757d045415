//! The impairment proxy with real sockets on 127.0.0.1: delay, loss and partitions for UDP;
//! order, stalls and cuts for TCP. Tests assert behaviour, never speed: lower bounds on
//! latency are strict, upper bounds only catch a proxy that forgot to release.

use chaos::impair::{Impairment, Link, TcpProxy, UdpProxy};
use chaos::wait_until;
use std::io::ErrorKind;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::task::JoinHandle;

const WAIT: Duration = Duration::from_secs(10);

fn any_port() -> SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// A UDP server that sends every datagram back; the task ends with the test's runtime.
async fn udp_echo() -> (SocketAddr, JoinHandle<()>) {
    let socket = UdpSocket::bind(any_port()).await.unwrap();
    let addr = socket.local_addr().unwrap();
    let task = tokio::spawn(async move {
        let mut buf = vec![0u8; 65_536];
        while let Ok((len, from)) = socket.recv_from(&mut buf).await {
            let _ = socket.send_to(&buf[..len], from).await;
        }
    });
    (addr, task)
}

/// A UDP server that only counts what it receives.
async fn udp_sink() -> (SocketAddr, Arc<AtomicUsize>) {
    let socket = UdpSocket::bind(any_port()).await.unwrap();
    let addr = socket.local_addr().unwrap();
    let received = Arc::new(AtomicUsize::new(0));
    let count = received.clone();
    tokio::spawn(async move {
        let mut buf = vec![0u8; 65_536];
        while socket.recv(&mut buf).await.is_ok() {
            count.fetch_add(1, Ordering::Relaxed);
        }
    });
    (addr, received)
}

/// A TCP server that echoes every connection and counts the connections it accepted.
async fn tcp_echo() -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = TcpListener::bind(any_port()).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            count.fetch_add(1, Ordering::Relaxed);
            tokio::spawn(async move {
                let (mut read, mut write) = stream.split();
                let _ = tokio::io::copy(&mut read, &mut write).await;
                let _ = write.shutdown().await;
            });
        }
    });
    (addr, accepted)
}

async fn udp_client(proxy: &UdpProxy) -> UdpSocket {
    let socket = UdpSocket::bind(any_port()).await.unwrap();
    socket.connect(proxy.local_addr()).await.unwrap();
    socket
}

/// Receives one datagram, or `None` if none comes within `within`.
async fn recv_within(socket: &UdpSocket, within: Duration) -> Option<Vec<u8>> {
    let mut buf = vec![0u8; 65_536];
    match tokio::time::timeout(within, socket.recv(&mut buf)).await {
        Ok(Ok(len)) => Some(buf[..len].to_vec()),
        _ => None,
    }
}

async fn read_exact_within(stream: &mut TcpStream, len: usize, within: Duration) -> Vec<u8> {
    let mut buf = vec![0u8; len];
    tokio::time::timeout(within, stream.read_exact(&mut buf))
        .await
        .expect("read timed out")
        .expect("read failed");
    buf
}

#[tokio::test]
async fn udp_round_trip_pays_the_delay_both_ways() {
    let (echo, _server) = udp_echo().await;
    let link = Link::with_seed(
        Impairment {
            delay: ms(30),
            ..Impairment::default()
        },
        1,
    );
    let proxy = UdpProxy::start(any_port(), echo, link.clone())
        .await
        .unwrap();
    let client = udp_client(&proxy).await;
    let mut rtts = Vec::new();
    for i in 0u32..15 {
        let sent = Instant::now();
        client.send(&i.to_be_bytes()).await.unwrap();
        let reply = recv_within(&client, WAIT)
            .await
            .expect("echo through the proxy");
        rtts.push(sent.elapsed());
        assert_eq!(reply, i.to_be_bytes());
    }
    rtts.sort();
    assert!(
        rtts[0] >= ms(60),
        "fastest round trip {:?} beat the delay",
        rtts[0]
    );
    let stats = link.stats();
    assert_eq!((stats.forward.packets, stats.reverse.packets), (15, 15));
    assert_eq!(proxy.mappings(), 1);
}

#[tokio::test]
async fn udp_loss_drops_about_the_configured_share() {
    let (sink, received) = udp_sink().await;
    let link = Link::with_seed(
        Impairment {
            loss: 0.5,
            ..Impairment::default()
        },
        2024,
    );
    let proxy = UdpProxy::start(any_port(), sink, link.clone())
        .await
        .unwrap();
    let client = udp_client(&proxy).await;
    // In batches the proxy has decided before the next, so no datagram is lost to a full
    // socket buffer instead of to the impairment.
    for batch in 0..20u64 {
        for i in 0..100u32 {
            client.send(&[i as u8; 100]).await.unwrap();
        }
        let want = (batch + 1) * 100;
        wait_until(WAIT, "the proxy to decide the batch", || async {
            let handled = link.stats().forward.handled();
            (handled == want)
                .then_some(())
                .ok_or(format!("{handled} of {want} decided"))
        })
        .await
        .unwrap();
    }
    let stats = link.stats().forward;
    assert_eq!(stats.dropped_partition + stats.dropped_overflow, 0);
    assert!(
        (700..=1300).contains(&stats.dropped_loss),
        "{} of 2000 lost",
        stats.dropped_loss
    );
    wait_until(WAIT, "the sink to get every forwarded datagram", || async {
        let got = received.load(Ordering::Relaxed) as u64;
        (got == stats.packets)
            .then_some(())
            .ok_or(format!("{got} of {}", stats.packets))
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn udp_partition_drops_everything_until_healed() {
    let (echo, _server) = udp_echo().await;
    let link = Link::with_seed(Impairment::default(), 3);
    let proxy = UdpProxy::start(any_port(), echo, link.clone())
        .await
        .unwrap();
    let client = udp_client(&proxy).await;
    client.send(b"before").await.unwrap();
    assert_eq!(
        recv_within(&client, WAIT).await.as_deref(),
        Some(&b"before"[..])
    );

    link.partition(true);
    for _ in 0..20 {
        client.send(b"during").await.unwrap();
    }
    wait_until(WAIT, "the partition to drop all 20", || async {
        let dropped = link.stats().forward.dropped_partition;
        (dropped == 20)
            .then_some(())
            .ok_or(format!("{dropped} dropped"))
    })
    .await
    .unwrap();
    assert_eq!(recv_within(&client, ms(200)).await, None);
    assert_eq!(link.stats().forward.packets, 1);

    link.partition(false);
    client.send(b"after").await.unwrap();
    assert_eq!(
        recv_within(&client, WAIT).await.as_deref(),
        Some(&b"after"[..])
    );
}

#[tokio::test]
async fn udp_rate_cap_spaces_datagrams_and_drops_what_would_wait_too_long() {
    let receiver = UdpSocket::bind(any_port()).await.unwrap();
    // 80 kbit/s is 10 bytes per millisecond, after a 1500-byte burst.
    let link = Link::with_seed(
        Impairment {
            rate_bps: Some(80_000),
            ..Impairment::default()
        },
        9,
    );
    let proxy = UdpProxy::start(any_port(), receiver.local_addr().unwrap(), link.clone())
        .await
        .unwrap();
    let client = udp_client(&proxy).await;
    let start = Instant::now();
    for i in 0..7u8 {
        client.send(&[i; 1000]).await.unwrap();
    }
    wait_until(WAIT, "the proxy to decide all 7", || async {
        let handled = link.stats().forward.handled();
        (handled == 7)
            .then_some(())
            .ok_or(format!("{handled} decided"))
    })
    .await
    .unwrap();
    let stats = link.stats().forward;
    // The 6th waits 450 ms at most, so it always passes; the 7th would wait 550 ms unless
    // the sends themselves were that slow.
    assert!(stats.packets >= 6, "{stats:?}");
    assert_eq!(stats.packets + stats.dropped_overflow, 7);
    for i in 0..stats.packets {
        let got = recv_within(&receiver, WAIT)
            .await
            .expect("a capped datagram");
        assert_eq!(got, [i as u8; 1000]);
    }
    // At least 6000 bytes crossed: all but the burst paid the rate.
    assert!(start.elapsed() >= ms(440), "took {:?}", start.elapsed());
}

#[tokio::test]
async fn udp_clients_get_their_own_replies() {
    let (echo, _server) = udp_echo().await;
    let link = Link::with_seed(
        Impairment {
            delay: ms(5),
            jitter: ms(3),
            ..Impairment::default()
        },
        4,
    );
    let proxy = UdpProxy::start(any_port(), echo, link.clone())
        .await
        .unwrap();
    let a = udp_client(&proxy).await;
    let b = udp_client(&proxy).await;
    a.send(b"from a").await.unwrap();
    b.send(b"from b").await.unwrap();
    assert_eq!(recv_within(&a, WAIT).await.as_deref(), Some(&b"from a"[..]));
    assert_eq!(recv_within(&b, WAIT).await.as_deref(), Some(&b"from b"[..]));
    assert_eq!(proxy.mappings(), 2);
}

#[tokio::test]
async fn tcp_stream_arrives_intact_and_in_order_under_jitter() {
    let (echo, _) = tcp_echo().await;
    let link = Link::with_seed(
        Impairment {
            delay: ms(2),
            jitter: ms(10),
            ..Impairment::default()
        },
        5,
    );
    let proxy = TcpProxy::start(any_port(), echo, link.clone())
        .await
        .unwrap();
    let stream = TcpStream::connect(proxy.local_addr()).await.unwrap();
    let (mut read, mut write) = stream.into_split();
    let data: Vec<u8> = (0..1_000_000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8)
        .collect();
    let sent = data.clone();
    let writer = tokio::spawn(async move {
        write.write_all(&sent).await.unwrap();
        write.shutdown().await.unwrap();
    });
    let mut echoed = Vec::new();
    tokio::time::timeout(Duration::from_secs(60), read.read_to_end(&mut echoed))
        .await
        .expect("echo timed out")
        .unwrap();
    writer.await.unwrap();
    assert_eq!(echoed.len(), data.len());
    assert!(echoed == data, "bytes differ");
    let stats = link.stats();
    assert_eq!(stats.forward.bytes, 1_000_000);
    assert_eq!(stats.reverse.bytes, 1_000_000);
    assert!(
        stats.forward.packets > 1,
        "the stream crossed in several chunks"
    );
    wait_until(WAIT, "the connection to close", || async {
        let open = proxy.connections();
        (open == 0).then_some(()).ok_or(format!("{open} open"))
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn tcp_partition_stalls_and_healing_resumes_the_same_connection() {
    let (echo, accepted) = tcp_echo().await;
    let link = Link::with_seed(Impairment::default(), 6);
    let proxy = TcpProxy::start(any_port(), echo, link.clone())
        .await
        .unwrap();
    let mut stream = TcpStream::connect(proxy.local_addr()).await.unwrap();
    stream.write_all(b"one").await.unwrap();
    assert_eq!(read_exact_within(&mut stream, 3, WAIT).await, b"one");

    link.partition(true);
    stream.write_all(b"two").await.unwrap();
    let mut buf = [0u8; 3];
    let stalled = tokio::time::timeout(ms(300), stream.read_exact(&mut buf)).await;
    assert!(stalled.is_err(), "data crossed a partition");
    assert_eq!(link.stats().forward.bytes, 3);

    link.partition(false);
    assert_eq!(read_exact_within(&mut stream, 3, WAIT).await, b"two");
    assert_eq!(accepted.load(Ordering::Relaxed), 1, "no reconnect");
    assert_eq!(proxy.connections(), 1);
}

#[tokio::test]
async fn tcp_cut_closes_current_connections_and_new_ones_work() {
    let (echo, accepted) = tcp_echo().await;
    let link = Link::with_seed(Impairment::default(), 7);
    let proxy = TcpProxy::start(any_port(), echo, link.clone())
        .await
        .unwrap();
    let mut first = TcpStream::connect(proxy.local_addr()).await.unwrap();
    let mut second = TcpStream::connect(proxy.local_addr()).await.unwrap();
    for stream in [&mut first, &mut second] {
        stream.write_all(b"hi").await.unwrap();
        assert_eq!(read_exact_within(stream, 2, WAIT).await, b"hi");
    }
    assert_eq!(proxy.connections(), 2);

    link.cut();
    for stream in [&mut first, &mut second] {
        let mut buf = [0u8; 16];
        let read = tokio::time::timeout(WAIT, stream.read(&mut buf))
            .await
            .expect("a cut connection ends");
        assert!(
            matches!(read, Ok(0) | Err(_)),
            "read {read:?} after the cut"
        );
    }
    wait_until(WAIT, "the proxy to drop both connections", || async {
        let open = proxy.connections();
        (open == 0).then_some(()).ok_or(format!("{open} open"))
    })
    .await
    .unwrap();

    let mut again = TcpStream::connect(proxy.local_addr()).await.unwrap();
    again.write_all(b"again").await.unwrap();
    assert_eq!(read_exact_within(&mut again, 5, WAIT).await, b"again");
    assert_eq!(accepted.load(Ordering::Relaxed), 3);
}

#[tokio::test]
async fn tcp_delay_is_paid_each_way_and_loss_is_ignored() {
    let (echo, _) = tcp_echo().await;
    let link = Link::with_seed(
        Impairment {
            delay: ms(25),
            loss: 1.0,
            ..Impairment::default()
        },
        8,
    );
    let proxy = TcpProxy::start(any_port(), echo, link).await.unwrap();
    let mut stream = TcpStream::connect(proxy.local_addr()).await.unwrap();
    let sent = Instant::now();
    stream.write_all(b"ping").await.unwrap();
    assert_eq!(read_exact_within(&mut stream, 4, WAIT).await, b"ping");
    assert!(sent.elapsed() >= ms(50), "round trip {:?}", sent.elapsed());
}

#[tokio::test]
async fn non_loopback_addresses_are_refused() {
    let loopback = any_port();
    for bad in ["0.0.0.0:0", "10.1.2.3:4222", "[::]:0", "192.0.2.7:9"] {
        let bad: SocketAddr = bad.parse().unwrap();
        for (listen, to) in [(bad, loopback), (loopback, bad)] {
            let udp = UdpProxy::start(listen, to, Link::default()).await;
            assert_eq!(
                udp.unwrap_err().kind(),
                ErrorKind::InvalidInput,
                "udp {listen} -> {to}"
            );
            let tcp = TcpProxy::start(listen, to, Link::default()).await;
            assert_eq!(
                tcp.unwrap_err().kind(),
                ErrorKind::InvalidInput,
                "tcp {listen} -> {to}"
            );
        }
    }
}

#[tokio::test]
async fn stopping_closes_the_listener_and_its_connections() {
    let (echo, _) = tcp_echo().await;
    let proxy = TcpProxy::start(any_port(), echo, Link::default())
        .await
        .unwrap();
    let addr = proxy.local_addr();
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(b"x").await.unwrap();
    assert_eq!(read_exact_within(&mut stream, 1, WAIT).await, b"x");
    proxy.stop().await;
    let mut buf = [0u8; 1];
    let read = tokio::time::timeout(WAIT, stream.read(&mut buf))
        .await
        .expect("connection ends");
    assert!(matches!(read, Ok(0) | Err(_)));
    assert!(
        TcpStream::connect(addr).await.is_err(),
        "listener still open"
    );

    let (udp_echo_addr, _server) = udp_echo().await;
    let udp = UdpProxy::start(any_port(), udp_echo_addr, Link::default())
        .await
        .unwrap();
    let addr = udp.local_addr();
    udp.stop().await;
    // The port is free again: the proxy's socket is closed.
    UdpSocket::bind(addr).await.expect("udp port released");
}
