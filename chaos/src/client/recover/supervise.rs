//! The supervisor of a [`crate::Participant`]: it watches the current client, replaces it
//! after a fault on the [`crate::RecoveryPolicy`] schedule, and stamps when media is back.

use super::{
    join_message, media_after, unix_now_us, EndReason, Recovery, Rejoin, Rejoined, Shared, Status,
};
use crate::client::fault::{is_refused, next_fault, Cause, Watched};
use crate::client::{Client, Joined};
use crate::error::{Error, Result};
use protocol::signal::ServerMessage;
use protocol::ErrorCode;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

/// How often, after a recovery, the counters are read for each other participant's first
/// packet: the resolution of [`Recovery::media_at`].
const MEDIA_POLL: Duration = Duration::from_millis(10);
/// Bound on opening a WebSocket: a live node answers the handshake in milliseconds.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Least wait between two attempts, whatever the policy says: a refused connection fails
/// in microseconds, and a loop must not spin.
const MIN_RETRY: Duration = Duration::from_millis(10);

/// The supervisor: watch the current client, recover it, repeat; until the participant
/// leaves, is replaced, or a recovery gives up.
pub(super) async fn supervise(shared: Arc<Shared>) {
    // The recovery whose other participants' first packets are still being looked for.
    let mut watching: Option<usize> = None;
    loop {
        let client = shared.read(|s| s.client.clone());
        let fault = next_fault(&client, shared.config.recovery.silence);
        tokio::pin!(fault);
        let watched = loop {
            let (shared, client, index) = (&shared, &client, watching);
            let media = async move {
                match index {
                    Some(i) => stamp_media_until_complete(shared, i, client).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                w = &mut fault => break w,
                () = media => watching = None,
            }
        };
        let cause = match watched {
            Watched::ClosedLocally => return,
            Watched::Replaced => return shared.end(EndReason::Replaced),
            Watched::Removed(reason) => return shared.end(EndReason::Removed(reason)),
            Watched::Fault(cause) => cause,
        };
        if !shared.config.recovery.enabled {
            return shared.end(EndReason::NotRecovering(cause));
        }
        tracing::info!(room = %shared.room, %cause, "recovering");
        match recover(&shared, &client, cause).await {
            Some(i) => watching = Some(i),
            None => return,
        }
    }
}

/// Stamps the first packet of each publisher after recovery `index`, until every other
/// participant has one or the watch time is up.
async fn stamp_media_until_complete(shared: &Shared, index: usize, client: &Client) {
    let until = Instant::now() + shared.config.recovery.media_watch;
    loop {
        let fresh = media_after(
            &shared.stats.snapshot(),
            shared.read(|s| s.recoveries[index].restarted_unix_us),
        );
        let others: Vec<String> = client
            .participants()
            .into_iter()
            .map(|p| p.id.to_string())
            .collect();
        let now = Instant::now();
        let unstamped = shared.read(|s| {
            fresh
                .iter()
                .any(|p| !s.recoveries[index].media_at.contains_key(p))
        });
        if unstamped {
            shared.update(|s| {
                let media = &mut s.recoveries[index].media_at;
                for p in &fresh {
                    media.entry(p.clone()).or_insert(now);
                }
            });
        }
        if others.iter().all(|p| fresh.contains(p)) || now >= until {
            return;
        }
        tokio::time::sleep(MEDIA_POLL).await;
    }
}

/// Replaces `old` after `cause`: returns the index of the recovery record once rejoined, or
/// `None` when the deadline passed (the participant then ends).
async fn recover(shared: &Shared, old: &Client, cause: Cause) -> Option<usize> {
    let noticed_at = Instant::now();
    let policy = &shared.config.recovery;
    let deadline = noticed_at + policy.deadline;
    let index = shared.update(|s| {
        if !matches!(s.status, Status::Ended(_)) {
            s.status = Status::Recovering(cause.clone());
        }
        s.recoveries.push(Recovery {
            cause: cause.clone(),
            noticed_at,
            attempts: 0,
            rejoined: None,
            gave_up: None,
            media_at: BTreeMap::new(),
            restarted_unix_us: 0,
        });
        s.recoveries.len() - 1
    });
    // A publish under way finishes (or fails, its connection being gone) first.
    let _ops = shared.ops.lock().await;
    // Grants changed by the application came with a new resume token; the old one no
    // longer resumes (PROTOCOL.md `permissions_changed`).
    let renewed = old.messages().into_iter().rev().find_map(|m| match m {
        ServerMessage::PermissionsChanged { resume_token, .. } => Some(resume_token),
        _ => None,
    });
    if let Some(token) = renewed {
        shared.update(|s| s.joined.resume_token = token);
    }
    old.shutdown().await;
    let restarted_unix_us = unix_now_us();
    shared.update(|s| s.recoveries[index].restarted_unix_us = restarted_unix_us);
    let mut target = match &cause {
        Cause::Reconnect { url: Some(u), .. } => u.clone(),
        // The node went silent: try the others first (the silent one comes last).
        Cause::Silent(_) => shared.read(|s| {
            s.joined
                .fallback_urls
                .first()
                .cloned()
                .unwrap_or_else(|| s.url.clone())
        }),
        _ => shared.read(|s| s.url.clone()),
    };
    let mut rejoin = Rejoin::Resume;
    let mut last_error = String::from("no attempt fitted in the deadline");
    for attempt in 0u32.. {
        let mut wait = policy.delay(attempt as usize, rand::random());
        if attempt > 0 {
            wait = wait.max(MIN_RETRY);
        }
        if Instant::now() + wait >= deadline {
            break;
        }
        tokio::time::sleep(wait).await;
        shared.update(|s| s.recoveries[index].attempts = attempt + 1);
        let tried =
            tokio::time::timeout_at(deadline, attempt_once(shared, &mut target, &mut rejoin)).await;
        match tried {
            Ok(Ok((client, joined, at))) => {
                tracing::info!(
                    room = %shared.room, url = %target, by = ?rejoin, attempts = attempt + 1,
                    "recovered"
                );
                shared.update(|s| {
                    s.recoveries[index].rejoined = Some(Rejoined {
                        at,
                        by: rejoin,
                        url: target.clone(),
                        node: joined.node.clone(),
                    });
                    s.client = Arc::new(client);
                    s.url = target.clone();
                    if !matches!(s.status, Status::Ended(_)) {
                        s.status = Status::Connected;
                    }
                });
                return Some(index);
            }
            Ok(Err(e)) => {
                tracing::debug!(
                    room = %shared.room, url = %target, error = %e, attempt,
                    "recovery attempt failed"
                );
                last_error = e.to_string();
            }
            Err(_) => {
                last_error = format!("deadline of {:?} passed mid-attempt", policy.deadline);
                break;
            }
        }
    }
    shared.update(|s| s.recoveries[index].gave_up = Some(last_error.clone()));
    shared.end(EndReason::GaveUp {
        cause,
        error: last_error,
    });
    None
}

/// One attempt: connect (falling back on refusal), `resume` or `join`, publish again. A
/// client that got this far and failed is closed before the error is returned.
async fn attempt_once(
    shared: &Shared,
    target: &mut String,
    rejoin: &mut Rejoin,
) -> Result<(Client, Joined, Instant)> {
    let client = connect_first(shared, target).await?;
    match rejoin_and_publish(shared, &client, rejoin).await {
        Ok((joined, at)) => Ok((client, joined, at)),
        Err(e) => {
            client.shutdown().await;
            Err(e)
        }
    }
}

async fn rejoin_and_publish(
    shared: &Shared,
    client: &Client,
    rejoin: &mut Rejoin,
) -> Result<(Joined, Instant)> {
    let fresh = || join_message(&shared.room, &shared.tokens, &shared.config);
    let joined = match rejoin {
        Rejoin::Resume => {
            let token = shared.read(|s| s.joined.resume_token.clone());
            match client.resume(&token).await {
                Ok(j) => j,
                Err(e)
                    if matches!(
                        e.server_code(),
                        Some(ErrorCode::Unauthorized | ErrorCode::NotFound)
                    ) =>
                {
                    tracing::info!(
                        room = %shared.room, error = %e,
                        "resume refused; joining afresh"
                    );
                    *rejoin = Rejoin::FreshJoin;
                    // The node waits for a join on the same socket after refusing a resume.
                    client.join_like(fresh()).await?
                }
                Err(e) => return Err(e),
            }
        }
        Rejoin::FreshJoin => client.join_like(fresh()).await?,
    };
    let at = Instant::now();
    // The newest resume token and fallback URLs, even if publishing fails below.
    let published = shared.update(|s| {
        s.joined = joined.clone();
        s.published.clone()
    });
    if let Some(opts) = published {
        client.publish(opts).await?;
    }
    Ok((joined, at))
}

/// Connects to `target`; when nothing listens there (the node is gone), to the latest
/// `joined.fallback_urls` in turn. `target` becomes the address that answered.
async fn connect_first(shared: &Shared, target: &mut String) -> Result<Client> {
    let fallbacks = shared.read(|s| s.joined.fallback_urls.clone());
    let candidates: Vec<String> = std::iter::once(target.clone())
        .chain(fallbacks.into_iter().filter(|u| u != target))
        .collect();
    let mut refused = None;
    for url in candidates {
        let config = shared.config.client.clone();
        // A frozen node's kernel still accepts the connection; its handshake never comes.
        let connect = Client::connect_sharing(&url, config, shared.stats.clone());
        let outcome = tokio::time::timeout(CONNECT_TIMEOUT, connect)
            .await
            .unwrap_or_else(|_| {
                Err(Error::timeout(
                    format!("connecting to {url}"),
                    CONNECT_TIMEOUT,
                ))
            });
        match outcome {
            Ok(c) => {
                *target = url;
                return Ok(c);
            }
            Err(e) if is_refused(&e) || matches!(e, Error::Timeout { .. }) => {
                tracing::debug!(%url, error = %e, "no node there; trying the next fallback url");
                refused = Some(e);
            }
            Err(e) => return Err(e),
        }
    }
    Err(refused.unwrap_or_else(|| Error::Usage("no url to connect to".into())))
}
