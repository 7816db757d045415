//! The arguments of `chaos load` and what they become once checked.

use std::net::IpAddr;
use std::time::Duration;

/// Most participants one run starts, every room together.
pub const MAX_PARTICIPANTS: u32 = 2000;
/// Longest run.
pub const MAX_DURATION: Duration = Duration::from_secs(24 * 3600);
/// Fastest join pace, joins per second.
pub const MAX_JOIN_RATE: f64 = 500.0;
/// Video RTP payload size: a packet of a real video stream, under a 1500-byte MTU.
pub const VIDEO_PAYLOAD: usize = 1200;
/// Audio: 20 ms Opus frames of 160 bytes (64 kbit/s).
pub const AUDIO_PAYLOAD: usize = 160;
pub const AUDIO_PPS: u32 = 50;
/// The local cluster's API secret (`deploy/local-cluster`, `API_SECRET`).
pub const LOCAL_SECRET: &str = "devsecret";

/// `chaos load`: rooms of publishers and subscribers against a cluster.
#[derive(clap::Args, Debug, Clone)]
pub struct LoadArgs {
    /// A node's WebSocket URL; repeat it to spread the participants round-robin over several
    /// nodes (a room then spans them when they are in different regions). Default: the
    /// local cluster's eu-1 and us-1.
    #[arg(long = "url", default_values_t = [
        "ws://127.0.0.1:7880/ws".to_owned(),
        "ws://127.0.0.1:7882/ws".to_owned(),
    ])]
    pub urls: Vec<String>,
    /// Rooms.
    #[arg(long, default_value_t = 1)]
    pub rooms: u32,
    /// Publishers per room (they publish and subscribe to nothing).
    #[arg(long, default_value_t = 1)]
    pub publishers: u32,
    /// Subscribers per room (they receive every track of the room and publish nothing).
    #[arg(long, default_value_t = 2)]
    pub subscribers: u32,
    /// Publishers publish an audio track (Opus-like, 50 packets/s of 160 bytes).
    #[arg(long)]
    pub audio: bool,
    /// Publishers publish a video track (VP8-like, 1200-byte packets at --video-kbps).
    #[arg(long)]
    pub video: bool,
    /// Video bitrate of each publisher, kbit/s of RTP payload.
    #[arg(long, default_value_t = 1000)]
    pub video_kbps: u32,
    /// How long the run lasts from the first join: `30s`, `2m`, `1h 30m`.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    pub duration: Duration,
    /// Joins started per second.
    #[arg(long, default_value_t = 10.0)]
    pub join_rate: f64,
    /// The cluster's API secret, which signs the join tokens (the local cluster's by default).
    #[arg(long, alias = "secret", env = "CHAOS_API_SECRET", default_value = LOCAL_SECRET)]
    pub api_secret: String,
    /// Rooms are named `<prefix>-<run id>-<n>`, the run id random.
    #[arg(long, default_value = "load")]
    pub room_prefix: String,
    /// Local IP of the participants' UDP sockets.
    #[arg(long, default_value = "127.0.0.1")]
    pub bind_ip: IpAddr,
    /// Also write the summary as JSON to this file (`-`: stdout, the table then goes to
    /// stderr).
    #[arg(long)]
    pub json: Option<String>,
}

/// A checked [`LoadArgs`].
#[derive(Debug, Clone, PartialEq)]
pub struct LoadConfig {
    pub urls: Vec<String>,
    pub rooms: u32,
    pub publishers: u32,
    pub subscribers: u32,
    pub audio: bool,
    pub video: bool,
    pub video_kbps: u32,
    /// Video packets per second that make `video_kbps` with [`VIDEO_PAYLOAD`]-byte packets.
    pub video_pps: u32,
    pub duration: Duration,
    /// Joins started per second.
    pub join_rate: f64,
    /// Between two join starts.
    pub join_interval: Duration,
    pub secret: String,
    /// `<prefix>-<run id>`: the rooms' common name.
    pub room_base: String,
    pub bind_ip: IpAddr,
}

impl LoadConfig {
    /// Participants of one room.
    pub fn per_room(&self) -> u32 {
        self.publishers + self.subscribers
    }

    /// Participants of the run.
    pub fn participants(&self) -> u32 {
        self.rooms * self.per_room()
    }

    /// Tracks each publisher publishes.
    pub fn kinds(&self) -> u32 {
        u32::from(self.audio) + u32::from(self.video)
    }

    /// `audio+video`, `audio`, `video` or `none`.
    pub fn media(&self) -> &'static str {
        match (self.audio, self.video) {
            (true, true) => "audio+video",
            (true, false) => "audio",
            (false, true) => "video",
            (false, false) => "none",
        }
    }
}

impl LoadArgs {
    /// The configuration these arguments ask for, or what is wrong with them. The run id is
    /// drawn here.
    pub fn validate(&self) -> Result<LoadConfig, String> {
        self.validate_with_run_id(&format!("{:04x}", rand::random::<u16>()))
    }

    pub fn validate_with_run_id(&self, run_id: &str) -> Result<LoadConfig, String> {
        if self.urls.is_empty() {
            return Err("give at least one --url".into());
        }
        for url in &self.urls {
            if !(url.starts_with("ws://") || url.starts_with("wss://")) {
                return Err(format!("--url {url}: not a ws:// or wss:// URL"));
            }
        }
        if self.rooms == 0 {
            return Err("--rooms must be at least 1".into());
        }
        let per_room = self.publishers.saturating_add(self.subscribers);
        if per_room == 0 {
            return Err("a room needs at least one publisher or subscriber".into());
        }
        let total = u64::from(self.rooms) * u64::from(per_room);
        if total > u64::from(MAX_PARTICIPANTS) {
            return Err(format!(
                "{total} participants: at most {MAX_PARTICIPANTS} per run"
            ));
        }
        if self.publishers > 0 && !self.audio && !self.video {
            return Err("publishers need something to publish: --audio and/or --video".into());
        }
        if !(30..=20_000).contains(&self.video_kbps) {
            return Err(format!(
                "--video-kbps {}: from 30 to 20000",
                self.video_kbps
            ));
        }
        if self.duration.is_zero() || self.duration > MAX_DURATION {
            return Err(format!(
                "--duration {}: more than 0 and at most 24h",
                humantime::format_duration(self.duration)
            ));
        }
        if !(self.join_rate > 0.0 && self.join_rate <= MAX_JOIN_RATE) {
            return Err(format!(
                "--join-rate {}: more than 0 and at most {MAX_JOIN_RATE} joins/s",
                self.join_rate
            ));
        }
        if self.api_secret.is_empty() {
            return Err("--api-secret is empty".into());
        }
        let room_base = format!("{}-{run_id}", self.room_prefix);
        // The longest participant id is the room's name and a suffix (see `plan`).
        let longest = format!("{room_base}-{}-sub-{}", self.rooms, per_room);
        protocol::ids::validate_id(&longest)
            .map_err(|e| format!("--room-prefix {}: {e}", self.room_prefix))?;
        let bits_per_packet = (VIDEO_PAYLOAD * 8) as f64;
        let video_pps = ((f64::from(self.video_kbps) * 1000.0) / bits_per_packet).round() as u32;
        Ok(LoadConfig {
            urls: self.urls.clone(),
            rooms: self.rooms,
            publishers: self.publishers,
            subscribers: self.subscribers,
            audio: self.audio,
            video: self.video,
            video_kbps: self.video_kbps,
            video_pps: video_pps.max(1),
            duration: self.duration,
            join_rate: self.join_rate,
            join_interval: Duration::from_secs_f64(1.0 / self.join_rate),
            secret: self.api_secret.clone(),
            room_base,
            bind_ip: self.bind_ip,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: LoadArgs,
    }

    fn parse(args: &[&str]) -> Result<LoadArgs, clap::Error> {
        let argv = std::iter::once("chaos-load").chain(args.iter().copied());
        Cli::try_parse_from(argv).map(|c| c.args)
    }

    fn config(args: &[&str]) -> Result<LoadConfig, String> {
        parse(args)
            .map_err(|e| e.to_string())?
            .validate_with_run_id("ab12")
    }

    #[test]
    fn defaults_aim_at_the_local_cluster() {
        let args = parse(&["--audio"]).unwrap();
        assert_eq!(
            args.urls,
            ["ws://127.0.0.1:7880/ws", "ws://127.0.0.1:7882/ws"]
        );
        assert_eq!(args.api_secret, LOCAL_SECRET);
        let c = args.validate_with_run_id("ab12").unwrap();
        assert_eq!((c.rooms, c.publishers, c.subscribers), (1, 1, 2));
        assert_eq!(c.duration, Duration::from_secs(30));
        assert_eq!(c.join_interval, Duration::from_millis(100));
        assert_eq!(c.room_base, "load-ab12");
        assert_eq!(c.media(), "audio");
    }

    #[test]
    fn durations_read_as_humantime_and_urls_repeat() {
        let c = config(&[
            "--url",
            "ws://a:1/ws",
            "--url",
            "wss://b/ws",
            "--duration",
            "1m 30s",
            "--rooms",
            "3",
            "--publishers",
            "2",
            "--subscribers",
            "4",
            "--audio",
            "--video",
            "--join-rate",
            "4",
        ])
        .unwrap();
        assert_eq!(c.urls, ["ws://a:1/ws", "wss://b/ws"]);
        assert_eq!(c.duration, Duration::from_secs(90));
        assert_eq!(c.participants(), 18);
        assert_eq!(c.kinds(), 2);
        assert_eq!(c.join_interval, Duration::from_millis(250));
        // 1000 kbit/s of 1200-byte packets: 104 packets a second.
        assert_eq!(c.video_pps, 104);
        assert!(parse(&["--duration", "ten seconds"]).is_err());
        assert!(parse(&["--rooms", "-1"]).is_err());
    }

    #[test]
    fn bad_arguments_are_refused_with_a_reason() {
        let cases: &[(&[&str], &str)] = &[
            (&["--video", "--url", "http://x/ws"], "not a ws://"),
            (&["--video", "--rooms", "0"], "--rooms"),
            (
                &["--video", "--publishers", "0", "--subscribers", "0"],
                "at least one publisher",
            ),
            (&[], "--audio and/or --video"),
            (&["--video", "--video-kbps", "5"], "--video-kbps"),
            (&["--video", "--duration", "0s"], "--duration"),
            (&["--video", "--duration", "25h"], "--duration"),
            (&["--video", "--join-rate", "0"], "--join-rate"),
            (&["--video", "--join-rate", "NaN"], "--join-rate"),
            (&["--video", "--join-rate", "1000"], "--join-rate"),
            (&["--video", "--api-secret", ""], "--api-secret"),
            (&["--video", "--room-prefix", "a b"], "--room-prefix"),
            (
                &["--video", "--rooms", "100", "--subscribers", "30"],
                "at most 2000",
            ),
        ];
        for (args, reason) in cases {
            let err = config(args).expect_err(&format!("{args:?} should be refused"));
            assert!(err.contains(reason), "{args:?}: {err}");
        }
        // Subscribers alone need no media flags.
        assert!(config(&["--publishers", "0"]).is_ok());
    }
}
