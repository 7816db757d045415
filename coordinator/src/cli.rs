//! The `coordinator` command line: run one coordinator of the cluster. A module of the
//! library so that test harnesses can build the same program under another name.

use crate::config::CoordArgs;
use clap::Parser;

#[derive(Parser)]
#[command(
    name = "coordinator",
    about = "Coordinator of the media cluster",
    version
)]
struct Cli {
    #[command(flatten)]
    args: CoordArgs,
}

/// The `coordinator` program.
pub fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    init_tracing(cli.args.log_json);
    let config = cli.args.into_config()?;
    let handle = crate::spawn(config)?;
    tracing::info!(admin = %format!("http://{}/nodes", handle.http_addr()), "admin api");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        // SIGTERM (Kubernetes, `docker stop`) stops it as Ctrl-C does: its NATS connection
        // is drained and the other coordinators take its share of the rooms.
        let mut term =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = async { if let Some(t) = term.as_mut() { t.recv().await; } else { std::future::pending::<()>().await } } => {}
        }
        tracing::info!("shutting down");
        handle.stop().await;
    });
    Ok(())
}

fn init_tracing(json: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,async_nats=warn"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stdout()));
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}
