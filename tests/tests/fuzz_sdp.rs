//! Fuzzing the SDP path: mutations of a real Chromium offer (`tests/fixtures/
//! chromium_offer.sdp`, see `capture_chromium_offer.sh` there) go through the node's real
//! publish path, over a WebSocket as a client sends them: line deletion, duplication and
//! swaps, corrupted attribute values, random characters, truncation, huge values, m-section
//! shuffles, duplication and removal, line-ending changes. For each case the node answers
//! `publish_answer` or `error` (or closes the socket) and keeps answering pings; between
//! batches nothing panicked, the node's live counts are back at rest once the fuzzing
//! sockets are gone, and a pair of clients in another room kept exchanging media.
//!
//! CI runs `CI_CASES` cases with a fixed seed. A longer run:
//!
//! ```sh
//! FUZZ_CASES=20000 cargo test --release -p tests --test fuzz_sdp -- --nocapture
//! FUZZ_SEED=0x1234 FUZZ_CASES=5000 cargo test -p tests --test fuzz_sdp -- --nocapture
//! ```
//!
//! A failure prints the seed and the case, and the command that replays it alone.
//! `NODE_PLANTED_PANIC=sdp` (debug builds) plants a panic in the node's publish handler for
//! offers with more than two `a=mid` lines, which this fuzzer must find.

mod fuzz_support;

use fuzz_support::{messages, pick, Arena, Event, RawWs, Run, ANSWER};
use protocol::signal::{ClientMessage, ServerMessage};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::Rng;
use std::net::Ipv4Addr;
use std::time::Instant;
use tests::{claims, mint};

const CHROMIUM_OFFER: &str = include_str!("../fixtures/chromium_offer.sdp");
/// Cases on every CI run.
const CI_CASES: u64 = 400;
const TEST: &str = "fuzz_sdp";

/// SDP lines (without line ends).
fn lines(sdp: &str) -> Vec<String> {
    sdp.split("\r\n")
        .filter(|l| !l.is_empty())
        .map(str::to_owned)
        .collect()
}

/// Values that break parsers: empty, signs, overflow, non-numbers, control and wide
/// characters, long runs.
fn odd_value(rng: &mut StdRng) -> String {
    match rng.gen_range(0..14) {
        0 => String::new(),
        1 => "-1".into(),
        2 => "0".into(),
        3 => u64::MAX.to_string(),
        4 => "99999999999999999999999999999999".into(),
        5 => "4294967296".into(),
        6 => "65536".into(),
        7 => "NaN".into(),
        8 => "\u{0}\u{1}\u{7f}".into(),
        9 => "é☃\u{202e}𝄞".into(),
        10 => "x".repeat(rng.gen_range(100..20_000)),
        11 => " ".repeat(rng.gen_range(1..50)),
        12 => ":::://// ;;; ==".into(),
        _ => rng.gen_range(0..100_000u32).to_string(),
    }
}

/// A random string of awkward characters.
fn random_chars(rng: &mut StdRng, n: usize) -> String {
    const POOL: &[char] = &[
        'a', 'Z', '0', '9', ' ', ':', '=', '/', ';', '\r', '\n', '\t', '\0', '\u{7f}', 'é', '☃',
        '𝄞', '\u{feff}', '-', '.', 'm', 'v', 'c', 'o',
    ];
    (0..n).map(|_| *pick(rng, POOL)).collect()
}

/// Splits an offer into its session part and its media sections.
fn sections(ls: &[String]) -> (Vec<String>, Vec<Vec<String>>) {
    let mut session = Vec::new();
    let mut media: Vec<Vec<String>> = Vec::new();
    for l in ls {
        if l.starts_with("m=") {
            media.push(vec![l.clone()]);
        } else if let Some(m) = media.last_mut() {
            m.push(l.clone());
        } else {
            session.push(l.clone());
        }
    }
    (session, media)
}

fn join_sections(session: Vec<String>, media: Vec<Vec<String>>) -> Vec<String> {
    session
        .into_iter()
        .chain(media.into_iter().flatten())
        .collect()
}

/// One mutation of the offer's lines; returns its name.
fn mutate_lines(rng: &mut StdRng, ls: &mut Vec<String>) -> String {
    if ls.is_empty() {
        ls.push(random_chars(rng, 20));
        return "new line in an empty offer".into();
    }
    let i = rng.gen_range(0..ls.len());
    match rng.gen_range(0..12) {
        0 => {
            let gone = ls.remove(i);
            format!("delete line {i} {gone:?}")
        }
        1 => {
            let times = if rng.gen_bool(0.8) {
                1
            } else {
                rng.gen_range(2..400)
            };
            for _ in 0..times {
                ls.insert(i, ls[i].clone());
            }
            format!("duplicate line {i} {:?} x{times}", ls[i])
        }
        2 => {
            let j = rng.gen_range(0..ls.len());
            ls.swap(i, j);
            format!("swap lines {i} and {j}")
        }
        3 | 4 => {
            // Corrupt an attribute's value (after `:` or the first space, or after `=`).
            let l = &ls[i];
            let cut = l
                .find(':')
                .map(|c| c + 1)
                .or_else(|| l.find('=').map(|c| c + 1))
                .unwrap_or(0);
            let rest = &l[cut..];
            let value = odd_value(rng);
            let new = if rng.gen_bool(0.5) && rest.contains(' ') {
                // Replace one space-separated field.
                let mut fields: Vec<String> = rest.split(' ').map(str::to_owned).collect();
                let f = rng.gen_range(0..fields.len());
                fields[f] = value;
                format!("{}{}", &l[..cut], fields.join(" "))
            } else {
                format!("{}{value}", &l[..cut])
            };
            let shown: String = new.chars().take(80).collect();
            ls[i] = new;
            format!("corrupt line {i} into {shown:?}")
        }
        5 => {
            let l = &mut ls[i];
            let mut chars: Vec<char> = l.chars().collect();
            let at = rng.gen_range(0..=chars.len());
            let n = rng.gen_range(1..12);
            let junk: Vec<char> = random_chars(rng, n).chars().collect();
            chars.splice(at..at, junk);
            *l = chars.into_iter().collect();
            format!("random characters into line {i}")
        }
        6 => {
            ls.insert(i, random_chars(rng, 1 + i % 60));
            format!("random line at {i}")
        }
        7 => {
            let (session, mut media) = sections(ls);
            media.shuffle(rng);
            *ls = join_sections(session, media);
            "shuffle m-sections".into()
        }
        8 => {
            let (session, mut media) = sections(ls);
            if media.is_empty() {
                return "no m-section to duplicate".into();
            }
            let k = rng.gen_range(0..media.len());
            let most = if rng.gen_bool(0.8) { 3 } else { 40 };
            let times = rng.gen_range(1..most);
            for _ in 0..times {
                media.push(media[k].clone());
            }
            *ls = join_sections(session, media);
            format!("duplicate m-section {k} x{times}")
        }
        9 => {
            let (session, mut media) = sections(ls);
            if media.is_empty() {
                return "no m-section to drop".into();
            }
            let k = rng.gen_range(0..media.len());
            media.remove(k);
            *ls = join_sections(session, media);
            format!("drop m-section {k}")
        }
        10 => {
            // Huge values where numbers are expected.
            let l = &ls[i];
            let huge = pick(
                rng,
                &[
                    "4294967295",
                    "18446744073709551616",
                    "65535",
                    "127",
                    "2147483648",
                ],
            );
            let new: String = l
                .split(' ')
                .map(|f| {
                    if f.chars().all(|c| c.is_ascii_digit()) && !f.is_empty() {
                        huge.to_string()
                    } else {
                        f.to_owned()
                    }
                })
                .collect::<Vec<_>>()
                .join(" ");
            ls[i] = new;
            format!("huge numbers in line {i}")
        }
        _ => {
            ls[i] = ls[i].to_uppercase();
            format!("uppercase line {i}")
        }
    }
}

/// One whole-text mutation; returns its name.
fn mutate_text(rng: &mut StdRng, sdp: &mut String) -> String {
    match rng.gen_range(0..4) {
        0 => {
            let mut at = rng.gen_range(0..=sdp.len());
            while !sdp.is_char_boundary(at) {
                at -= 1;
            }
            sdp.truncate(at);
            format!("truncate at {at}")
        }
        1 => {
            *sdp = sdp.replace("\r\n", "\n");
            "LF line ends".into()
        }
        2 => {
            *sdp = sdp.replace("\r\n", "");
            "no line ends".into()
        }
        _ => {
            let n = rng.gen_range(1..200);
            let junk = random_chars(rng, n);
            let mut at = rng.gen_range(0..=sdp.len());
            while !sdp.is_char_boundary(at) {
                at -= 1;
            }
            sdp.insert_str(at, &junk);
            format!("insert {n} random characters at {at}")
        }
    }
}

/// Removes candidates whose address is not IPv4 loopback, so that the node, which checks
/// the candidates it is given, only ever sends to 127.0.0.0/8.
fn keep_loopback_candidates(sdp: &str) -> String {
    let mut out = String::with_capacity(sdp.len());
    for piece in sdp.split_inclusive('\n') {
        let l = piece.trim();
        let lower = l.to_ascii_lowercase();
        if let Some(pos) = lower.find("candidate:") {
            let addr = l[pos..].split_whitespace().nth(4).unwrap_or("");
            if !addr.parse::<Ipv4Addr>().is_ok_and(|a| a.is_loopback()) {
                continue;
            }
        }
        out.push_str(piece);
    }
    out
}

/// A mutated offer, and what was done to it.
fn mutated_offer(rng: &mut StdRng) -> (String, Vec<String>) {
    let mut steps = Vec::new();
    // One case in twenty is the offer as captured: the node must accept it.
    if rng.gen_ratio(1, 20) {
        return (CHROMIUM_OFFER.to_owned(), vec!["unmodified".into()]);
    }
    let mut ls = lines(CHROMIUM_OFFER);
    for _ in 0..rng.gen_range(1..=4) {
        steps.push(mutate_lines(rng, &mut ls));
    }
    let mut sdp = ls.join("\r\n") + "\r\n";
    if rng.gen_ratio(1, 4) {
        steps.push(mutate_text(rng, &mut sdp));
    }
    (keep_loopback_candidates(&sdp), steps)
}

/// What the node sent until it answered the publish (`publish_answer` or `error`) or
/// closed the socket.
async fn until_answer(ws: &mut RawWs) -> anyhow::Result<Vec<Event>> {
    let deadline = Instant::now() + ANSWER;
    let mut got = Vec::new();
    for _ in 0..10_000 {
        let left = deadline.saturating_duration_since(Instant::now());
        match ws.next(left).await {
            Some(e @ (Event::Close(_) | Event::Eof)) => {
                got.push(e);
                return Ok(got);
            }
            Some(Event::Text(t)) => {
                let done = matches!(
                    serde_json::from_str(&t),
                    Ok(ServerMessage::PublishAnswer { .. } | ServerMessage::Error { .. })
                );
                got.push(Event::Text(t));
                if done {
                    return Ok(got);
                }
            }
            Some(e) => got.push(e),
            None => anyhow::bail!("no publish_answer nor error within {ANSWER:?}: {got:?}"),
        }
    }
    anyhow::bail!("endless frames: {got:?}")
}

fn summary(events: &[Event]) -> String {
    let mut out = Vec::new();
    for e in events {
        match e {
            Event::Text(t) => match serde_json::from_str::<ServerMessage>(t) {
                Ok(ServerMessage::PublishAnswer { sdp }) => {
                    out.push(format!("publish_answer ({} bytes)", sdp.len()))
                }
                Ok(ServerMessage::SubscribeOffer { .. }) => out.push("subscribe_offer".into()),
                Ok(ServerMessage::Error { code, message }) => {
                    out.push(format!("error {code:?}: {message}"))
                }
                _ => out.push(t.chars().take(100).collect()),
            },
            other => out.push(format!("{other:?}")),
        }
    }
    out.join(", ")
}

/// One case: join, publish the mutated offer, check the answer, sometimes publish the
/// real offer after it, then go (a `leave`, a Close frame, or a dropped stream).
async fn sdp_case(
    arena: &Arena,
    room: &str,
    case: u64,
    mut rng: StdRng,
) -> (Vec<String>, anyhow::Result<()>) {
    let mut log = Vec::new();
    let res = async {
        let (offer, steps) = mutated_offer(&mut rng);
        log.push(format!("mutations: {}", steps.join("; ")));
        let mut ws = RawWs::connect(arena.node.http_addr()).await?;
        let user = format!("sdp-{case}");
        let token = mint(&arena.node, &claims(room, &user, 600));
        let join = ClientMessage::Join {
            room: protocol::RoomId::new(room)?,
            token,
            region: None,
        };
        ws.send_text(&serde_json::to_string(&join)?).await;
        let got = ws.sync().await?;
        anyhow::ensure!(
            messages(&got)
                .iter()
                .any(|m| matches!(m, ServerMessage::Joined { .. })),
            "join refused: {}",
            summary(&got)
        );
        let mut offers = vec![offer];
        if rng.gen_ratio(1, 3) {
            offers.push(CHROMIUM_OFFER.to_owned());
            log.push("then the captured offer".into());
        }
        for (k, sdp) in offers.iter().enumerate() {
            let frame = serde_json::to_string(&ClientMessage::Publish { sdp: sdp.clone() })?;
            log.push(format!("publish #{k}: {} bytes", frame.len()));
            if !ws.send_text(&frame).await {
                let got = ws.sync().await?;
                anyhow::ensure!(fuzz_support::is_closed(&got), "write failed, socket open");
                log.push(format!("  socket closed: {}", summary(&got)));
                break;
            }
            let got = until_answer(&mut ws).await?;
            log.push(format!("  node: {}", summary(&got)));
            let msgs = messages(&got);
            for m in &msgs {
                if let ServerMessage::Error { message, .. } = m {
                    anyhow::ensure!(!message.is_empty(), "an error without a message");
                }
            }
            if k == 0 && steps_unmodified(&log) {
                anyhow::ensure!(
                    msgs.iter()
                        .any(|m| matches!(m, ServerMessage::PublishAnswer { .. })),
                    "the captured offer was not answered: {}",
                    summary(&got)
                );
            }
            if fuzz_support::is_closed(&got) {
                break;
            }
            // The session still answers.
            let after = ws.sync().await?;
            if fuzz_support::is_closed(&after) {
                log.push(format!("  then closed: {}", summary(&after)));
                break;
            }
        }
        match rng.gen_range(0..3) {
            0 => {
                ws.send_text(r#"{"type":"leave"}"#).await;
                log.push("leave".into());
                ws.finish(false).await
            }
            1 => {
                log.push("close frame".into());
                ws.finish(true).await
            }
            _ => {
                log.push("drop the stream".into());
                ws.finish(false).await
            }
        }
    }
    .await;
    (log, res)
}

fn steps_unmodified(log: &[String]) -> bool {
    log.first().is_some_and(|l| l == "mutations: unmodified")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutated_chromium_offers() -> anyhow::Result<()> {
    let run = Run::from_env(CI_CASES);
    let arena = Arena::start(|_| {}).await?;
    let room = format!("fuzz-sdp-{:x}", run.seed & 0xffff_ffff);
    fuzz_support::run_cases(&arena, run, TEST, |case, rng| {
        sdp_case(&arena, &room, case, rng)
    })
    .await?;
    arena.stop().await;
    Ok(())
}

#[test]
fn the_fixture_is_a_chromium_offer_with_loopback_candidates_only() {
    assert!(CHROMIUM_OFFER.starts_with("v=0\r\n"));
    assert!(CHROMIUM_OFFER.contains("m=audio") && CHROMIUM_OFFER.contains("m=video"));
    assert_eq!(keep_loopback_candidates(CHROMIUM_OFFER), CHROMIUM_OFFER);
    let stray = "a=candidate:1 1 udp 1 192.0.2.2 5000 typ host\r\na=candidate:1 1 udp 1 127.0.0.1 5000 typ host\r\na=candidate:1 1 udp 1 foo.local 5 typ host\r\n";
    assert_eq!(
        keep_loopback_candidates(stray),
        "a=candidate:1 1 udp 1 127.0.0.1 5000 typ host\r\n"
    );
}
