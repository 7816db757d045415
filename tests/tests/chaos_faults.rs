//! The chaos runner's injectors against real processes: a starved process really loses its
//! CPU and gets it back, a NATS cut really holds a connection and lets nothing through until
//! healed, a coordinator kill leaves placement to the other one (and with both dead it
//! fails), and churn really joins, receives and leaves.

use chaos::runner::faults::{self, NatsCuts, Starvation};
use chaos::wait_until;
use std::process::{Command, Stdio};
use std::time::Duration;
use tests::nats::NatsServer;
use tests::procs::{ProcSpec, Procs};

const WAIT: Duration = Duration::from_secs(30);

fn allowed_cpus(pid: u32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
        .map(|v| v.trim().to_owned())
        .unwrap_or_default()
}

/// A busy child process, killed on drop.
struct Busy(std::process::Child);

impl Drop for Busy {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_starved_process_loses_its_cpu_and_gets_it_back() -> anyhow::Result<()> {
    let victim = Busy(
        Command::new("sh")
            .args(["-c", "while :; do :; done"])
            .stdin(Stdio::null())
            .spawn()?,
    );
    let pid = victim.0.id();
    let all = allowed_cpus(pid);
    let last = (faults::cpus() - 1).to_string();
    let began = std::time::Instant::now();
    let starved = Starvation::begin(pid)?;
    assert_eq!(allowed_cpus(pid), last, "pinned to the last CPU");
    // Alone it would take a whole CPU; sharing one with four busy processes, about a fifth.
    wait_until(
        WAIT,
        "the victim's share of a CPU to fall under 40 %",
        || async {
            let share = starved.share().map_err(|e| e.to_string())?;
            // CPU time counts in 10 ms ticks: a share over less than a second says nothing.
            (began.elapsed() >= Duration::from_secs(1) && share < 0.4)
                .then_some(())
                .ok_or(format!("{:.0} %", share * 100.0))
        },
    )
    .await?;
    let share = starved.end()?;
    assert!(share < 0.4, "{share}");
    assert_eq!(allowed_cpus(pid), all, "back on every CPU");
    // The competitors are gone: the machine's busy processes pinned to the last CPU are
    // not left running (every `sh` child of ours is reaped by `end`).
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nats_cut_holds_the_connection_and_passes_nothing_until_healed() -> anyhow::Result<()> {
    use futures::StreamExt;
    let nats = NatsServer::start()?;
    let direct = tests::nats::connect(&nats.url()).await?;
    let cuts = NatsCuts::start(&["n1".to_owned()], ([127, 0, 0, 1], nats.port()).into()).await?;
    let cut = chaos::sandbox::nats_options(&nats.url())
        .connect(cuts.url("n1").unwrap())
        .await?;
    let mut inbox = direct.subscribe("chaos.cut").await?;
    let mut echo = direct.subscribe("chaos.echo").await?;
    let responder = direct.clone();
    tokio::spawn(async move {
        while let Some(m) = echo.next().await {
            if let Some(reply) = m.reply {
                let _ = responder.publish(reply, m.payload).await;
            }
        }
    });
    direct.flush().await?;
    let answer = tokio::time::timeout(WAIT, cut.request("chaos.echo", "a".into())).await??;
    assert_eq!(answer.payload.as_ref(), b"a");

    cuts.cut("n1", true)?;
    assert_eq!(
        cuts.connections("n1"),
        1,
        "the connection is held, not closed"
    );
    cut.publish("chaos.cut", "during".into()).await?;
    // Nothing passes either way: a request cannot get its answer.
    let asked = tokio::time::timeout(
        Duration::from_secs(1),
        cut.request("chaos.echo", "b".into()),
    )
    .await;
    assert!(asked.is_err(), "a request crossed the cut: {asked:?}");
    let got = tokio::time::timeout(Duration::from_millis(100), inbox.next()).await;
    assert!(got.is_err(), "a message crossed the cut: {got:?}");

    cuts.cut("n1", false)?;
    // Held, not lost: what was sent during the cut arrives once healed.
    let m = tokio::time::timeout(WAIT, inbox.next()).await?;
    assert_eq!(m.unwrap().payload.as_ref(), b"during");
    let answer = tokio::time::timeout(WAIT, cut.request("chaos.echo", "c".into())).await??;
    assert_eq!(answer.payload.as_ref(), b"c");
    Ok(())
}

fn spec() -> ProcSpec {
    let mut spec = ProcSpec::new(
        env!("CARGO_BIN_EXE_cluster-node"),
        env!("CARGO_BIN_EXE_cluster-coordinator"),
        &[("n1", "eu"), ("n2", "eu")],
    );
    spec.node_flags.push("--room-empty-grace-secs=1".into());
    spec
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_room_is_placed_with_one_coordinator_dead_and_not_with_both() -> anyhow::Result<()> {
    let mut procs = Procs::start(spec()).await?;
    let ws = procs.ws_url("n1");
    let secret = procs.secret().to_owned();
    procs.signal("c1", "KILL")?;
    let took = faults::place_new_room(&ws, &secret, "onecoord").await?;
    eprintln!("placed in {took:?} with c1 dead");
    procs.signal("c2", "KILL")?;
    let refused = tokio::time::timeout(WAIT, faults::place_new_room(&ws, &secret, "nocoord")).await;
    assert!(
        matches!(refused, Ok(Err(_))),
        "no coordinator, no placement: {refused:?}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn churners_join_receive_and_leave_and_nothing_stays() -> anyhow::Result<()> {
    use chaos::{mint_tokens, Participant, ParticipantConfig, PublishOpts};
    use protocol::token::Claims;
    use protocol::{RoomId, UserId};
    let procs = Procs::start(spec()).await?;
    let room = RoomId::new(tests::room_name("churn"))?;
    let member = UserId::new("member")?;
    let tokens = mint_tokens(
        procs.secret(),
        Claims::new(room.clone(), member.clone(), 0, 0),
        Duration::from_secs(600),
    );
    let p = Participant::join(
        &procs.ws_url("n1"),
        room.as_str(),
        tokens,
        ParticipantConfig::default(),
    )
    .await?;
    p.publish(PublishOpts {
        audio: false,
        video: true,
        video_pps: 30,
        ..PublishOpts::default()
    })
    .await?;
    // Through the other node: each churner's room is cascaded across both.
    let out = faults::churn(
        &procs.ws_url("n2"),
        &room,
        &member,
        procs.secret(),
        "t",
        Duration::from_secs(3),
    )
    .await;
    assert!(out.cycles >= faults::CHURNERS, "{out:?}");
    assert_eq!(out.failed, 0, "{out:?}");
    // Everyone who churned has left: wherever the room lives (the member's socket is on
    // n1, its media node is the coordinators' choice), it holds the member alone.
    wait_until(WAIT, "the room to hold the member alone", || async {
        let mut held = Vec::new();
        for node in ["n1", "n2"] {
            let rooms = procs.rooms_on(node).await.map_err(|e| e.to_string())?;
            held.extend(
                rooms
                    .into_iter()
                    .filter(|(r, _)| r == room.as_str())
                    .flat_map(|(_, members)| members),
            );
        }
        (!held.is_empty() && held.iter().all(|m| m == "member"))
            .then_some(())
            .ok_or(format!("members on the nodes: {held:?}"))
    })
    .await?;
    Participant::leave_all([&p]).await;
    Ok(())
}
