//! The publishing half of [`Client`]: one sendonly connection, renegotiated with a new
//! `publish` offer whenever tracks are added or removed.

use super::{lock, Client, Joined, Publisher};
use crate::error::{Error, Result};
use crate::peer::{build_peer_with_codecs, LocalAddr, Peer};
use crate::publisher::{self, LocalTrack, PublishOpts, SentStats};
use protocol::signal::{ClientMessage, IceServer, ServerMessage, TrackKind};
use webrtc::peer_connection::RTCSessionDescription;

impl Client {
    /// Publishes synthetic tracks: creates the publisher connection on first use (client
    /// offers, sendonly), sends `publish` with an offer that carries its candidates, applies
    /// `publish_answer`, waits for the connection and starts the RTP senders. A later call
    /// adds the kinds not yet published by renegotiating the same connection.
    pub async fn publish(&self, opts: PublishOpts) -> Result<()> {
        let joined = self
            .joined()
            .ok_or_else(|| Error::Usage("publish before joined".into()))?;
        let kinds: Vec<TrackKind> = [
            (opts.audio, TrackKind::Audio),
            (opts.video, TrackKind::Video),
        ]
        .into_iter()
        .filter_map(|(on, kind)| on.then_some(kind))
        .collect();
        if kinds.is_empty() {
            return Err(Error::Usage("publish needs audio or video".into()));
        }
        let mut slot = self.publisher.lock().await;
        if let Some(p) = &*slot {
            if let Some(k) = kinds
                .iter()
                .find(|k| p.tracks.iter().any(|t| t.active && t.kind == **k))
            {
                return Err(Error::Usage(format!("already publishing {k:?}")));
            }
        }
        let publisher = match &mut *slot {
            Some(p) => p,
            None => {
                let ice = self.ice_servers(&joined);
                let local = LocalAddr {
                    bind: self.config.bind_ip,
                    announce: self.config.announce_ip,
                };
                let peer = build_peer_with_codecs(
                    local,
                    &ice,
                    None,
                    self.config.ice_check_interval,
                    opts.media_codecs(),
                )
                .await?;
                lock(&self.peers).push(peer.clone());
                slot.insert(Publisher {
                    peer,
                    tracks: Vec::new(),
                })
            }
        };
        let first = publisher.tracks.is_empty();
        let stream_id = joined.participant.id.as_str();
        let added = publisher.tracks.len();
        let result = async {
            for kind in kinds {
                let t = publisher::add_track(&publisher.peer, kind, opts.video_codec, stream_id)
                    .await?;
                publisher.tracks.push(t);
            }
            self.negotiate_publisher(&publisher.peer).await?;
            let state = publisher.peer.state_watch();
            for t in &mut publisher.tracks[added..] {
                publisher::start_sending(t, &opts, state.clone(), &self.tasks).await?;
            }
            publisher
                .peer
                .wait_connected(self.config.request_timeout)
                .await
        }
        .await;
        if result.is_ok() {
            let mut published = lock(&self.published);
            let p = published.get_or_insert(PublishOpts {
                audio: false,
                video: false,
                ..opts.clone()
            });
            p.audio |= opts.audio;
            p.video |= opts.video;
        }
        if result.is_err() && first {
            // A connection that never published is useless; the next call starts afresh.
            lock(&self.publisher_ice).peer = None;
            publisher.peer.close().await;
            *slot = None;
        }
        result
    }

    fn ice_servers(&self, joined: &Joined) -> Vec<IceServer> {
        if self.config.use_ice_servers {
            joined.ice_servers.clone()
        } else {
            Vec::new()
        }
    }

    /// Offer, `publish`, `publish_answer`, with the offer's candidates gathered first.
    async fn negotiate_publisher(&self, peer: &Peer) -> Result<()> {
        let offer = peer.pc.create_offer(None).await?;
        peer.pc.set_local_description(offer).await?;
        let sdp = peer
            .local_sdp_after_gathering(self.config.gather_timeout)
            .await?;
        let answer = self
            .request(&ClientMessage::Publish { sdp }, "publish_answer", |m| {
                matches!(
                    m,
                    ServerMessage::PublishAnswer { .. } | ServerMessage::Error { .. }
                )
            })
            .await?;
        let ServerMessage::PublishAnswer { sdp } = answer else {
            return Err(Error::Usage("unexpected reply to publish".into()));
        };
        peer.pc
            .set_remote_description(RTCSessionDescription::answer(sdp)?)
            .await?;
        let pending = {
            let mut ice = lock(&self.publisher_ice);
            ice.peer = Some(peer.clone());
            std::mem::take(&mut ice.pending)
        };
        for c in pending {
            if let Err(e) = peer.pc.add_ice_candidate(c).await {
                self.events
                    .push_local_error(format!("publisher add_ice_candidate: {e}"));
            }
        }
        Ok(())
    }

    /// Stops every published track and renegotiates (`publish` with the tracks' transceivers
    /// no longer sending), as a user turning camera and microphone off would.
    pub async fn unpublish(&self) -> Result<()> {
        let mut slot = self.publisher.lock().await;
        let publisher = slot
            .as_mut()
            .filter(|p| p.tracks.iter().any(|t| t.active))
            .ok_or_else(|| Error::Usage("not publishing".into()))?;
        lock(&self.published).take();
        for t in publisher.tracks.iter_mut().filter(|t| t.active) {
            t.remove(&publisher.peer).await?;
        }
        self.negotiate_publisher(&publisher.peer).await
    }

    /// Closes the publisher connection without any signaling, as if its transport died.
    /// The next [`Client::publish`] starts a new connection.
    pub async fn close_publisher(&self) -> Result<()> {
        let publisher = self
            .publisher
            .lock()
            .await
            .take()
            .ok_or_else(|| Error::Usage("no publisher connection".into()))?;
        lock(&self.publisher_ice).peer = None;
        lock(&self.published).take();
        publisher.peer.close().await;
        Ok(())
    }

    /// Per published track: how many packets were handed to webrtc.
    pub async fn sent_stats(&self) -> Vec<SentStats> {
        match &*self.publisher.lock().await {
            Some(p) => p.tracks.iter().map(LocalTrack::stats).collect(),
            None => Vec::new(),
        }
    }
}
