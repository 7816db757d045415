//! `chaos load`: a load tester in the manner of LiveKit's `lk load-test`.
//!
//! It puts `rooms` rooms of synthetic participants on a cluster: per room `publishers` that
//! publish synthetic audio and/or video (publish only) and `subscribers` that receive every
//! track of the room (subscribe only). Participants join at `join_rate` per second, spread
//! round-robin over the given WebSocket URLs so that a room spans the nodes behind them, and
//! stay until `duration` has passed since the start (or Ctrl-C). While it runs a progress
//! line says, once a second, who joined and what flows; at the end the publishers stop, the
//! subscribers' counters settle, everyone leaves, and a [`Summary`] (joins, join time
//! percentiles, tracks, bitrates, packets, loss, end-to-end latency) is printed as a table
//! and, with `--json`, written as JSON.
//!
//! The pieces: [`config`] (arguments and their validation), [`plan`] (who joins where and
//! when, pure), [`tally`] (counters and rates, pure), [`summary`] (the figures and how they
//! are printed, pure), and `run` (the asynchronous part that drives the participants).

pub mod config;
pub mod plan;
mod run;
pub mod summary;
pub mod tally;

pub use config::{LoadArgs, LoadConfig};
pub use run::run;
pub use summary::Summary;

use anyhow::Context;
use std::io::Write;

/// `chaos load ARGS`: validates the arguments, runs the load on a multi-thread runtime,
/// prints the summary table (on stderr when the JSON goes to stdout) and writes the JSON.
/// Fails when the arguments are invalid or when no participant could join.
pub fn run_command(args: LoadArgs) -> anyhow::Result<()> {
    let config = args.validate().map_err(anyhow::Error::msg)?;
    let json = args.json.clone();
    // webrtc's tokio runtime spawns its drivers with `tokio::spawn`: multi-thread.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let summary = rt.block_on(run(config))?;
    // Background closes of the participants' connections get a moment, then go.
    rt.shutdown_timeout(std::time::Duration::from_secs(2));
    let table = summary.table();
    match json.as_deref() {
        Some("-") => {
            eprintln!("{table}");
            println!("{}", serde_json::to_string_pretty(&summary)?);
        }
        Some(path) => {
            println!("{table}");
            let mut file =
                std::fs::File::create(path).with_context(|| format!("creating {path}"))?;
            writeln!(file, "{}", serde_json::to_string_pretty(&summary)?)
                .with_context(|| format!("writing {path}"))?;
        }
        None => println!("{table}"),
    }
    if summary.joins.ok == 0 && summary.joins.attempted > 0 {
        anyhow::bail!("no participant could join (see the errors above)");
    }
    Ok(())
}

/// The `chaos load` command as a program of its own (`chaos-load ARGS`, the arguments of
/// `chaos load`): what the tests run as a child process, built with them as they build the
/// node and coordinator programs.
pub fn cli_main() -> std::process::ExitCode {
    #[derive(clap::Parser)]
    #[command(name = "chaos-load", about = "chaos load as a program of its own")]
    struct Cli {
        #[command(flatten)]
        args: LoadArgs,
    }
    let cli = <Cli as clap::Parser>::parse();
    crate::init_logs();
    match run_command(cli.args) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
