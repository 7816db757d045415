//! What the bad-input and limit tests share: a pair of good clients whose media must keep
//! flowing, and waiting for the error a bad client is owed.

use crate::{join, wait_until, NodeHandle};
use chaos::{Client, PublishOpts};
use protocol::signal::ServerMessage;
use protocol::ErrorCode;
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(20);

/// Sends (`send`) and waits for an `error` with `code` sent after it.
pub async fn expect_error(
    c: &Client,
    code: ErrorCode,
    send: impl std::future::Future<Output = chaos::Result<()>>,
) -> anyhow::Result<()> {
    let cursor = c.message_count();
    send.await?;
    let got = c
        .wait_for_since(cursor, WAIT, |m| matches!(m, ServerMessage::Error { .. }))
        .await?;
    match got {
        ServerMessage::Error { code: c2, message } => {
            assert_eq!(c2, code, "error message: {message}");
            assert!(!message.is_empty());
        }
        other => panic!("{other:?}"),
    }
    Ok(())
}

/// The two good clients (`good1`, `good2`, from [`good_pair`]) still receive each other's media: both counts grow by `n` more.
pub async fn still_flowing(good: &[Client; 2], n: u64) -> anyhow::Result<()> {
    let before = [
        good[0].received_from("good2"),
        good[1].received_from("good1"),
    ];
    wait_until(
        WAIT,
        "media to keep flowing between the good clients",
        || async {
            let now = [
                good[0].received_from("good2"),
                good[1].received_from("good1"),
            ];
            if now[0] >= before[0] + n && now[1] >= before[1] + n {
                Ok(())
            } else {
                Err(format!("before {before:?} now {now:?}"))
            }
        },
    )
    .await?;
    assert!(!good[0].is_closed() && !good[1].is_closed());
    Ok(())
}

/// `good1` and `good2` join `room` and publish to each other; returns once media flows.
pub async fn good_pair(node: &NodeHandle, room: &str) -> anyhow::Result<[Client; 2]> {
    let a = join(node, room, "good1").await?;
    let b = join(node, room, "good2").await?;
    a.publish(PublishOpts::default()).await?;
    b.publish(PublishOpts::default()).await?;
    let pair = [a, b];
    still_flowing(&pair, 100).await?;
    Ok(pair)
}
