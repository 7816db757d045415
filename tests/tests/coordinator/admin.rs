//! The admin API and the coordinator's own lifecycle (graceful stop, NATS late).

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_api_needs_the_token_lists_nodes_and_drained_nodes_get_no_rooms() -> anyhow::Result<()>
{
    let nats = NatsServer::start()?;
    let nodes = fake_nodes(&nats, &[("a", "eu"), ("b", "eu"), ("c", "eu")]).await;
    // c says so itself, in its heartbeat.
    nodes[2].set_draining(true);
    let coord = start_coordinator(&nats, "c1");
    wait_cluster(&[&coord], 3).await?;
    let addr = coord.http_addr();

    for path in ["/nodes", "/rooms", "/debug/snapshot"] {
        assert_eq!(http(addr, "GET", path, None).await?.0, 401, "{path}");
        assert_eq!(
            http(addr, "GET", path, Some("wrong")).await?.0,
            401,
            "{path}"
        );
    }
    assert_eq!(http(addr, "POST", "/nodes/a/drain", None).await?.0, 401);
    for path in ["/healthz", "/readyz", "/metrics"] {
        assert_eq!(http(addr, "GET", path, None).await?.0, 200, "{path}");
    }

    let listed = admin_json(addr, "/nodes").await?;
    let ids: HashSet<&str> = listed
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|n| n["id"].as_str())
        .collect();
    assert_eq!(ids, HashSet::from(["a", "b", "c"]));
    let c = listed
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["id"] == "c")
        .unwrap();
    assert_eq!(
        (c["draining"].as_bool(), c["draining_reported"].as_bool()),
        (Some(true), Some(true))
    );
    for field in [
        "region",
        "ws_url",
        "load",
        "healthy",
        "last_heartbeat_age_ms",
    ] {
        assert!(!c[field].is_null(), "{field} missing in {c}");
    }

    // The operator drains a: every coordinator marks it, and the node is told.
    let (status, body) = http(addr, "POST", "/nodes/a/drain", Some(TOKEN)).await?;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        http(addr, "POST", "/nodes/nope/drain", Some(TOKEN))
            .await?
            .0,
        404
    );
    wait_until(WAIT, "node a told to drain", || async {
        match nodes[0].state().drains.as_slice() {
            [true] => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await?;
    let listed = admin_json(addr, "/nodes").await?;
    let a = listed
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["id"] == "a")
        .unwrap();
    assert_eq!(a["draining"], true);
    assert_eq!(a["draining_requested"], true);

    let client = fake_node::connect(&nats.url()).await?;
    let mut rooms = Vec::new();
    for _ in 0..30 {
        let room = room_name("drain");
        let (a, _) = allocate(&client, &room).await?;
        assert_eq!(a.node.as_str(), "b", "a draining node got {room}");
        rooms.push(a);
    }

    // /rooms: the directory, with member counts from the nodes that answer.
    nodes[1].set_rooms(vec![RoomMembers {
        room: rooms[0].room.clone(),
        members: 3,
        links: Vec::new(),
    }]);
    let listed = admin_json(addr, "/rooms").await?;
    let rows = listed.as_array().unwrap();
    assert_eq!(rows.len(), 30);
    let row = |r: &RoomAssignment| rows.iter().find(|x| x["room"] == r.room.as_str()).unwrap();
    assert_eq!(row(&rooms[0])["members"], 3);
    assert_eq!(row(&rooms[0])["epoch"], 1);
    assert_eq!(row(&rooms[0])["node"], "b");
    assert!(row(&rooms[1])["members"].is_null());

    // Undrain: a takes rooms again.
    assert_eq!(
        http(addr, "DELETE", "/nodes/a/drain", Some(TOKEN)).await?.0,
        200
    );
    wait_until(WAIT, "a undrained", || async {
        match nodes[0].state().drains.as_slice() {
            [true, false] => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await?;
    let mut to_a = 0;
    for _ in 0..10 {
        let (x, _) = allocate(&client, &room_name("undrain")).await?;
        to_a += usize::from(x.node.as_str() == "a");
    }
    assert!(to_a > 0, "an undrained, idle node took no room");

    let (_, metrics) = http(addr, "GET", "/metrics", None).await?;
    for needle in [
        "coord_allocations_total{result=\"created\"}",
        "coord_allocation_latency_seconds_bucket",
        "coord_live_nodes 3",
        "coord_node_pending_rooms{node=\"b\"",
        "coord_node_draining{node=\"c\",region=\"eu\"} 1",
    ] {
        assert!(metrics.contains(needle), "{needle} missing in\n{metrics}");
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gracefully_stopped_coordinator_hands_over_without_failed_requests() -> anyhow::Result<()>
{
    let nats = NatsServer::start()?;
    let nodes = fake_nodes(&nats, &[("a", "eu"), ("b", "eu")]).await;
    let c1 = start_coordinator(&nats, "c1");
    let c2 = start_coordinator(&nats, "c2");
    wait_cluster(&[&c1, &c2], nodes.len()).await?;
    let client = fake_node::connect(&nats.url()).await?;
    let stopped = Instant::now();
    c2.stop().await;
    let took = stopped.elapsed();
    assert!(took < Duration::from_secs(3), "stop took {took:?}");
    // c1 still counts c2 alive for a while; its forwards find no responder and c1 decides.
    for _ in 0..50 {
        let room = room_name("handover");
        let a = allocate_once(&client, &room)
            .await
            .map_err(anyhow::Error::msg)?;
        assert_eq!(a.coordinator, "c1");
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_coordinator_started_before_nats_becomes_ready_when_it_appears() -> anyhow::Result<()> {
    tests::init_logs();
    let mut nats = NatsServer::prepare(NatsServer::free_port()?)?;
    let mut config = coordinator::Config::local(nats.coordinator_url());
    config.id = "early".into();
    let c = coordinator::spawn(config)?;
    let (status, body) = http_get(c.http_addr(), "/readyz", &[]).await?;
    assert_eq!((status, body.as_str()), (503, "not connected to nats"));
    assert_eq!(http_get(c.http_addr(), "/healthz", &[]).await?.0, 200);
    nats.start_prepared()?;
    let _nodes = fake_nodes(&nats, &[("a", "eu")]).await;
    wait_cluster(&[&c], 1).await?;
    let client = fake_node::connect(&nats.url()).await?;
    let (a, _) = allocate(&client, &room_name("early")).await?;
    assert_eq!(a.node.as_str(), "a");
    Ok(())
}
/// With `--tls-cert`/`--tls-key` the admin API is HTTPS: a client that trusts the
/// certificate gets `/healthz` over TLS, and plain HTTP on that port is not served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_api_is_served_over_https_with_a_certificate() -> anyhow::Result<()> {
    use rustls::pki_types::ServerName;
    use std::sync::Arc;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let nats = NatsServer::start()?;
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("tls-coordinator");
    std::fs::create_dir_all(&dir)?;
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".into()])?;
    let (cert_file, key_file) = (dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::write(&cert_file, cert.cert.pem())?;
    std::fs::write(&key_file, cert.signing_key.serialize_pem())?;
    let mut config = coordinator::Config::local(nats.url());
    config.tls = Some((cert_file, key_file));
    let c = coordinator::spawn(config)?;
    let addr = c.http_addr();

    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert.cert.der().clone())?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let client = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(client));
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    let mut tls = connector
        .connect(ServerName::try_from("localhost")?, tcp)
        .await?;
    tls.write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await?;
    let mut response = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), tls.read_to_end(&mut response)).await??;
    let response = String::from_utf8_lossy(&response);
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");

    let plain = http_get(addr, "/healthz", &[]).await;
    assert!(!matches!(plain, Ok((200, _))), "plain HTTP: {plain:?}");
    Ok(())
}
