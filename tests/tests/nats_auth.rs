//! NATS authorization (README "NATS security", `protocol::nats_auth`): a real nats-server
//! with the generated users and permissions refuses anonymous clients, keeps a node's user
//! to what nodes may do, and still carries a whole cluster of nodes and coordinators with
//! their own users, without a single permissions violation; over TLS too.

use async_nats::jetstream;
use chaos::PublishOpts;
use futures::{FutureExt, StreamExt};
use protocol::cluster::{self, ROOMS_BUCKET};
use protocol::NodeId;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tests::nats::NatsServer;
use tests::{join, room_name, wait_media, wait_numbered_messages, wait_until, Config};

const WAIT: Duration = Duration::from_secs(30);

/// Connects as node `id` the way the node does (its user, its own inbox prefix), recording
/// the server's errors (permissions violations) the client is told of.
async fn node_client(
    nats: &NatsServer,
    id: &str,
) -> anyhow::Result<(async_nats::Client, Arc<Mutex<Vec<String>>>)> {
    let (user, password) = nats.node_credentials(id)?;
    let errors = Arc::new(Mutex::new(Vec::new()));
    let seen = errors.clone();
    let client = async_nats::ConnectOptions::with_user_and_password(user, password)
        .custom_inbox_prefix(protocol::nats_auth::node_inbox_prefix(&NodeId::new(id)?))
        .event_callback(move |event| {
            let seen = seen.clone();
            async move {
                if let async_nats::Event::ServerError(e) = event {
                    seen.lock().unwrap().push(e.to_string());
                }
            }
        })
        .connect(nats.anonymous_url())
        .await?;
    Ok((client, errors))
}

async fn wait_violations(errors: &Arc<Mutex<Vec<String>>>, n: usize) -> anyhow::Result<()> {
    wait_until(WAIT, "the server to report every violation", || async {
        let seen = errors.lock().unwrap().clone();
        let violations = seen
            .iter()
            .filter(|e| e.to_lowercase().contains("permissions violation"))
            .count();
        if violations >= n {
            Ok(())
        } else {
            Err(format!("{violations} of {n}: {seen:?}"))
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_without_the_right_credentials_is_refused() -> anyhow::Result<()> {
    let nats = NatsServer::start()?;
    let anonymous = async_nats::ConnectOptions::new()
        .connect(nats.anonymous_url())
        .await;
    let Err(err) = anonymous else {
        panic!("an anonymous client was let in");
    };
    assert_eq!(
        err.kind(),
        async_nats::ConnectErrorKind::AuthorizationViolation,
        "{err}"
    );
    // A node's user with a wrong password, and with another node's password.
    let (_, n2_password) = nats.node_credentials("n2")?;
    let (n1, _) = nats.node_credentials("n1")?;
    for password in ["wrong".to_owned(), n2_password] {
        let refused = async_nats::ConnectOptions::with_user_and_password(n1.clone(), password)
            .connect(nats.anonymous_url())
            .await;
        assert!(refused.is_err(), "n1 with a password not its own");
    }
    assert!(!tests::nats::authenticates(nats.port(), "n1", "wrong")?);
    // The right credentials work.
    let (_client, _) = node_client(&nats, "n1").await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_cannot_publish_as_a_coordinator_or_command_another_node() -> anyhow::Result<()> {
    let nats = NatsServer::start()?;
    nats.expect_violations();
    let admin = tests::nats::connect(&nats.url()).await?;
    let (n1, errors) = node_client(&nats, "n1").await?;
    let n2 = NodeId::new("n2")?;
    let forbidden = [
        cluster::COORD_HEARTBEAT.to_owned(),
        cluster::NODE_DOWN.to_owned(),
        cluster::coord_allocate("c1"),
        cluster::node_drain(&n2),
        cluster::node_drain(&NodeId::new("n1")?),
        cluster::node_ping(&n2),
        cluster::node_rooms(&n2),
        "_INBOX.someone".to_owned(),
        "_INBOX_n2.someone".to_owned(),
    ];
    let mut watched = admin.subscribe(">").await?;
    admin.flush().await?;
    for subject in &forbidden {
        n1.publish(subject.clone(), "forged".into()).await?;
    }
    // What a node may send, after the forged ones on the same connection: once it
    // arrives, the others would have.
    let marker = cluster::node_peer(&n2);
    n1.publish(marker.clone(), "allowed".into()).await?;
    n1.flush().await?;
    let arrived = tokio::time::timeout(WAIT, async {
        let mut arrived = Vec::new();
        while let Some(m) = watched.next().await {
            if m.subject.as_str() == marker {
                break;
            }
            arrived.push(m.subject.to_string());
        }
        arrived
    })
    .await?;
    let leaked: Vec<_> = arrived.iter().filter(|s| forbidden.contains(s)).collect();
    assert!(leaked.is_empty(), "forged messages arrived: {leaked:?}");
    wait_violations(&errors, forbidden.len()).await?;
    // The server logs each (what the end-to-end test below relies on).
    wait_until(WAIT, "the server to log the violations", || async {
        let log = std::fs::read_to_string(nats.dir().join("server.log")).unwrap_or_default();
        match log.matches("Publish Violation").count() {
            n if n >= forbidden.len() => Ok(()),
            n => Err(format!("{n} logged")),
        }
    })
    .await?;
    assert!(n1.connection_state() == async_nats::connection::State::Connected);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_cannot_listen_on_another_nodes_subjects_or_inboxes() -> anyhow::Result<()> {
    let nats = NatsServer::start()?;
    nats.expect_violations();
    let admin = tests::nats::connect(&nats.url()).await?;
    let (n1, errors) = node_client(&nats, "n1").await?;
    let n2 = NodeId::new("n2")?;
    let mut stolen = vec![
        n1.subscribe(cluster::node_join(&n2)).await?,
        n1.subscribe(cluster::ALLOCATE).await?,
        n1.subscribe("_INBOX.>").await?,
        n1.subscribe("_INBOX_n2.>").await?,
    ];
    let mut own = n1
        .subscribe(cluster::node_join(&NodeId::new("n1")?))
        .await?;
    n1.flush().await?;
    wait_violations(&errors, stolen.len()).await?;
    for subject in [
        cluster::node_join(&n2),
        cluster::ALLOCATE.to_owned(),
        "_INBOX.x".to_owned(),
        "_INBOX_n2.x".to_owned(),
    ] {
        admin.publish(subject, "secret".into()).await?;
    }
    admin
        .publish(cluster::node_join(&NodeId::new("n1")?), "mine".into())
        .await?;
    admin.flush().await?;
    let mine = tokio::time::timeout(WAIT, own.next()).await?;
    assert_eq!(mine.map(|m| m.payload), Some("mine".into()));
    for sub in &mut stolen {
        if let Some(Some(m)) = sub.next().now_or_never() {
            panic!("n1 received {} meant for someone else", m.subject);
        }
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_reads_the_room_directory_and_cannot_write_it() -> anyhow::Result<()> {
    let nats = NatsServer::start()?;
    nats.expect_violations();
    // The coordinators own the directory: they create it.
    let coord = tests::nats::connect(&nats.coordinator_url()).await?;
    let rooms = jetstream::new(coord)
        .create_key_value(jetstream::kv::Config {
            bucket: ROOMS_BUCKET.to_owned(),
            history: 5,
            ..Default::default()
        })
        .await?;
    rooms.put("room-a", "by a coordinator".into()).await?;

    let (n1, errors) = node_client(&nats, "n1").await?;
    let js = jetstream::ContextBuilder::new()
        .timeout(Duration::from_millis(500))
        .build(n1.clone());
    // Reading works as the node reads: it listens on a key's subject, where the
    // coordinators' writes to that key are published, and reads the key back.
    let store = js.get_key_value(ROOMS_BUCKET).await?;
    let mut key_b = n1.subscribe("$KV.rooms.room-b").await?;
    n1.flush().await?;
    rooms.put("room-b", "by a coordinator".into()).await?;
    let heard = tokio::time::timeout(WAIT, key_b.next()).await?;
    assert_eq!(
        heard.expect("a message").payload.as_ref(),
        b"by a coordinator"
    );
    assert_eq!(
        store.get("room-a").await?.as_deref(),
        Some(&b"by a coordinator"[..])
    );
    // Consumers are not for nodes: a watch of the whole bucket is refused.
    assert!(store.watch_all().await.is_err(), "a node opened a watch");

    // Writing does not: put, delete, purge and the stream's own purge and deletion.
    let admin = tests::nats::connect(&nats.url()).await?;
    let mut watched = admin.subscribe(">").await?;
    admin.flush().await?;
    assert!(store.put("room-a", "forged".into()).await.is_err());
    assert!(store.delete("room-a").await.is_err());
    assert!(store.purge("room-a").await.is_err());
    for api in ["PURGE", "DELETE"] {
        let subject = format!("$JS.API.STREAM.{api}.KV_rooms");
        n1.publish(subject, "".into()).await?;
    }
    // Then something a node may publish, on the same connection: once it arrives, the
    // forged writes would have.
    let marker = cluster::NODE_HEARTBEAT;
    n1.publish(marker, "{}".into()).await?;
    n1.flush().await?;
    let forged = tokio::time::timeout(WAIT, async {
        let mut forged = Vec::new();
        while let Some(m) = watched.next().await {
            let subject = m.subject.as_str();
            if subject == marker {
                break;
            }
            if subject.starts_with("$KV.rooms.")
                || subject.starts_with("$JS.API.STREAM.PURGE.")
                || subject.starts_with("$JS.API.STREAM.DELETE.")
            {
                forged.push(subject.to_owned());
            }
        }
        forged
    })
    .await?;
    assert!(
        forged.is_empty(),
        "node writes reached JetStream: {forged:?}"
    );
    wait_violations(&errors, 6).await?;
    let entry = rooms
        .get("room-a")
        .await?
        .expect("the entry is still there");
    assert_eq!(entry.as_ref(), b"by a coordinator");
    Ok(())
}

/// The whole cluster with its own users: two coordinators, two nodes, a room spread over
/// both, messages and media across them; the server logs no permissions violation.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_with_per_role_users_serves_a_room_across_nodes() -> anyhow::Result<()> {
    tests::init_logs();
    let nats = NatsServer::start()?;
    let coordinators = (0..2)
        .map(|_| coordinator::spawn(coordinator::Config::local(nats.coordinator_url())))
        .collect::<Result<Vec<_>, _>>()?;
    let mut nodes = Vec::new();
    for (id, region) in [("n1", "eu"), ("n2", "us")] {
        let mut c = Config::local_dev();
        c.node_id = NodeId::new(id)?;
        c.region = region.into();
        c.nats_url = Some(nats.anonymous_url());
        let (user, password) = nats.node_credentials(id)?;
        (c.nats_user, c.nats_password) = (Some(user), Some(password));
        c.resume_grace = Duration::ZERO;
        c.room_empty_grace = Duration::from_millis(300);
        nodes.push(node::spawn(c)?);
    }
    wait_until(WAIT, "coordinators to see both nodes", || async {
        for c in &coordinators {
            let snap = c.snapshot();
            let healthy = snap.nodes.iter().filter(|n| n.healthy).count();
            if !snap.ready || healthy < 2 || snap.live_coordinators.len() < 2 {
                return Err(format!("{snap:?}"));
            }
        }
        Ok(())
    })
    .await?;
    let room = room_name("auth");
    let a = join(&nodes[0], &room, "alice").await?;
    let b = join(&nodes[1], &room, "bob").await?;
    for i in 0..5 {
        a.send_message("bob", serde_json::json!({ "n": i })).await?;
    }
    wait_numbered_messages(&b, "alice", 5, WAIT).await?;
    a.publish(PublishOpts::default()).await?;
    b.publish(PublishOpts::default()).await?;
    wait_media(&a, &["bob"], 20).await?;
    wait_media(&b, &["alice"], 20).await?;
    a.leave().await?;
    b.leave().await?;
    // Every node and coordinator did all this within its permissions.
    let log = std::fs::read_to_string(nats.dir().join("server.log"))?;
    let violations: Vec<&str> = log
        .lines()
        .filter(|l| l.to_lowercase().contains("violation"))
        .collect();
    assert!(violations.is_empty(), "{violations:#?}");
    Ok(())
}

/// A CA and a server certificate for 127.0.0.1 in `dir`: (ca, cert, key) paths.
fn test_certificates(
    dir: &std::path::Path,
) -> anyhow::Result<(std::path::PathBuf, std::path::PathBuf, std::path::PathBuf)> {
    use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate()?)?;
    let key = KeyPair::generate()?;
    let cert = CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()])?
        .signed_by(&key, &ca)?;
    std::fs::create_dir_all(dir)?;
    let paths = (
        dir.join("ca.pem"),
        dir.join("server.pem"),
        dir.join("server-key.pem"),
    );
    std::fs::write(&paths.0, ca.pem())?;
    std::fs::write(&paths.1, cert.pem())?;
    std::fs::write(&paths.2, key.serialize_pem())?;
    Ok(paths)
}

/// TLS as the production configs have it: the server requires it; a coordinator and a
/// node given the CA (`--nats-ca-file`) and their users connect and form the cluster; a
/// client without TLS is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn coordinators_and_nodes_reach_a_tls_nats_with_the_ca_file() -> anyhow::Result<()> {
    tests::init_logs();
    let dir = std::env::temp_dir().join(format!("nats-tls-{:08x}", rand::random::<u32>()));
    let (ca, cert, key) = test_certificates(&dir)?;
    let nats = NatsServer::start_with_config(&format!(
        "tls {{ cert_file: {:?}, key_file: {:?}, ca_file: {:?}, timeout: 2 }}\n",
        cert, key, ca
    ))?;
    let tls_url = format!("tls://127.0.0.1:{}", nats.port());

    let plain =
        async_nats::ConnectOptions::with_user_and_password("admin".into(), "whatever".into())
            .connect(nats.anonymous_url())
            .await;
    assert!(plain.is_err(), "a client without TLS is refused");

    let mut config = coordinator::Config::local(tls_url.clone());
    let (user, password) = nats.coordinator_credentials();
    (config.nats_user, config.nats_password) = (Some(user), Some(password));
    config.nats_ca_file = Some(ca.clone());
    let coordinator = coordinator::spawn(config)?;

    let mut c = Config::local_dev();
    c.node_id = NodeId::new("tls-1")?;
    c.nats_url = Some(tls_url);
    let (user, password) = nats.node_credentials("tls-1")?;
    (c.nats_user, c.nats_password) = (Some(user), Some(password));
    c.nats_ca_file = Some(ca);
    let node = node::spawn(c)?;
    // Over TLS.
    tests::lossy_cell::coordinator_sees_a_node(&coordinator, WAIT).await?;
    let a = join(&node, &room_name("tls"), "alice").await?;
    a.leave().await?;
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
