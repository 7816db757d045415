//! A DTLS handshake survives the loss of the server's flight 4 (vendor/rtc-dtls/PATCH.md).
//!
//! Two `rtc` DTLS endpoints, client and server, exchange datagrams in virtual time, sans IO.
//! The first datagram carrying the server's ServerHello is dropped. The client retransmits
//! its flight 3 a second later; the server must send flight 4 again (RFC 6347 4.2.4). In
//! `rtc-dtls` 0.21.1 the repeated flight 3 cleared the server's retransmit timer and nothing
//! was sent again: the client gave up after 7 retransmissions, and a relay link losing 3 % of
//! its datagrams stayed "connecting" for ever about one time in eight.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use rtc::dtls::config::{ConfigBuilder, ExtendedMasterSecretType, HandshakeConfig};
use rtc::dtls::endpoint::{Endpoint, EndpointEvent};
use rtc::peer_connection::certificate::{CertificateParams, RTCCertificate};
use rtc::shared::TransportProtocol;

fn config(is_client: bool) -> Arc<HandshakeConfig> {
    let provider = rtc::crypto::default_provider().expect("a crypto provider");
    let certificate = RTCCertificate::generate(
        provider.crypto(),
        rtc::crypto::SignatureScheme::EcdsaP256Sha256,
        CertificateParams::new(vec!["node".to_owned()]).expect("certificate parameters"),
    )
    .expect("a certificate")
    .dtls_certificate;
    Arc::new(
        ConfigBuilder::default()
            .with_crypto_provider(provider)
            .with_certificates(vec![certificate])
            .with_insecure_skip_verify(true)
            .with_extended_master_secret(ExtendedMasterSecretType::Require)
            .build(is_client, None)
            .expect("a DTLS config"),
    )
}

/// A datagram whose first record is a handshake message of type `kind` (2: ServerHello).
fn starts_with_handshake(d: &[u8], kind: u8) -> bool {
    d.len() > 13 && d[0] == 22 && d[13] == kind
}

/// One way, as on the relay path of `cascade.rs`'s lossy-link test.
const DELAY: Duration = Duration::from_millis(10);

#[derive(Debug, Default)]
struct Outcome {
    client_done: Option<Duration>,
    server_done: Option<Duration>,
    dropped: usize,
    errors: Vec<String>,
}

/// Runs one handshake for at most `limit` of virtual time over a path with a one-way `delay`;
/// `drop` decides, for each datagram the server sends, whether the network loses it. Events
/// at the same instant: datagrams are delivered before timers fire (with a symmetric delay
/// the client's retransmitted flight 3 reaches the server exactly when the server's own
/// retransmit timer is due, so this is the order that matters).
fn handshake(limit: Duration, delay: Duration, mut drop: impl FnMut(&[u8]) -> bool) -> Outcome {
    let caddr: SocketAddr = "127.0.0.1:5000".parse().unwrap();
    let saddr: SocketAddr = "127.0.0.1:6000".parse().unwrap();
    let start = Instant::now();
    let mut now = start;
    let mut client = Endpoint::new(caddr, TransportProtocol::UDP, None);
    let mut server = Endpoint::new(saddr, TransportProtocol::UDP, Some(config(false)));
    let mut out = Outcome::default();
    // (when it arrives, whether it goes to the server, the datagram)
    let mut in_flight: Vec<(Instant, bool, BytesMut)> = Vec::new();
    client
        .connect(now, saddr, config(true), None)
        .expect("connect");
    for _step in 0..10_000 {
        while let Some(t) = client.poll_transmit() {
            in_flight.push((now + delay, true, BytesMut::from(&t.message[..])));
        }
        while let Some(t) = server.poll_transmit() {
            if drop(&t.message) {
                out.dropped += 1;
                continue;
            }
            in_flight.push((now + delay, false, BytesMut::from(&t.message[..])));
        }
        if out.client_done.is_some() && out.server_done.is_some() {
            return out;
        }
        let next = in_flight
            .iter()
            .map(|(at, _, _)| *at)
            .chain(client.poll_timeout(&saddr))
            .chain(server.poll_timeout(&caddr))
            .min();
        let Some(next) = next else {
            return out; // nobody will ever send again
        };
        now = now.max(next);
        if now - start > limit {
            return out;
        }
        in_flight.sort_by_key(|(at, _, _)| *at);
        let due = in_flight.iter().take_while(|(at, _, _)| *at <= now).count();
        for (_, to_server, data) in in_flight.drain(..due).collect::<Vec<_>>() {
            let (endpoint, from, done, side) = if to_server {
                (&mut server, caddr, &mut out.server_done, "server")
            } else {
                (&mut client, saddr, &mut out.client_done, "client")
            };
            match endpoint.read(now, from, None, data) {
                Ok(events) => {
                    if events
                        .iter()
                        .any(|e| matches!(e, EndpointEvent::HandshakeComplete))
                    {
                        done.get_or_insert(now - start);
                    }
                }
                Err(e) => out.errors.push(format!("{side} read: {e}")),
            }
        }
        if client.poll_timeout(&saddr).is_some_and(|t| t <= now) {
            if let Err(e) = client.handle_timeout(saddr, now) {
                out.errors.push(format!("client timeout: {e}"));
            }
        }
        if server.poll_timeout(&caddr).is_some_and(|t| t <= now) {
            if let Err(e) = server.handle_timeout(caddr, now) {
                out.errors.push(format!("server timeout: {e}"));
            }
        }
    }
    out
}

#[test]
fn a_handshake_without_loss_completes_at_once() {
    let out = handshake(Duration::from_secs(30), DELAY, |_| false);
    // Three round trips: flights 1-2, 3-4, 5-6.
    assert!(out.client_done.is_some_and(|t| t <= 6 * DELAY), "{out:?}");
    assert!(out.server_done.is_some_and(|t| t <= 6 * DELAY), "{out:?}");
}

#[test]
fn a_lost_server_flight_is_sent_again() {
    let mut lost_once = false;
    let out = handshake(Duration::from_secs(30), DELAY, |d| {
        if !lost_once && starts_with_handshake(d, 2) {
            lost_once = true;
            return true;
        }
        false
    });
    assert_eq!(
        out.dropped, 1,
        "the ServerHello datagram was dropped: {out:?}"
    );
    // The client's flight 3 goes again after its 1 s timer, and so must flight 4 then:
    // done in a few seconds, far from the client's 8 s of retransmissions.
    let client = out.client_done.expect("the client completed the handshake");
    let server = out.server_done.expect("the server completed the handshake");
    assert!(client <= Duration::from_secs(4), "{out:?}");
    assert!(server <= Duration::from_secs(4), "{out:?}");
}
