//! The `node` command line: run a media node, or mint a join or room API call token. A module of the library
//! so that test harnesses can build the same program under another name.

mod token;

use crate::config::{Config, NodeArgs};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "node", about = "Media node of the cluster", version)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    run: NodeArgs,
}

#[derive(Subcommand)]
enum Command {
    /// Run the node (the default).
    Run(Box<NodeArgs>),
    /// Print a join token (grants, lifetime, metadata, room settings), signed with the
    /// API secret.
    Token(Box<token::TokenArgs>),
    /// Print a short-lived call token for the coordinators' room API.
    ApiToken(token::ApiTokenArgs),
}

/// The `node` program.
pub fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Some(Command::Token(args)) => args.run(),
        Some(Command::ApiToken(args)) => args.run(),
        Some(Command::Run(args)) => run(*args),
        None => run(cli.run),
    }
}

fn run(args: NodeArgs) -> anyhow::Result<()> {
    let config = Config::from_sources(&args)?;
    init_tracing(config.log_json);
    let media_rt = crate::media_runtime(config.media_threads)?;
    let handle = media_rt.handle().clone();
    let system = actix::System::new();
    system.block_on(async move {
        let (server, addr, node) = crate::start_in_system(config, handle).await?;
        let stopper = server.handle();
        let exit = node.shared.exit.clone();
        actix::spawn(async move {
            let mut term =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
            let sigterm = async {
                match term.as_mut() {
                    Some(t) => {
                        t.recv().await;
                    }
                    None => std::future::pending::<()>().await,
                }
            };
            tokio::select! {
                _ = tokio::signal::ctrl_c() => tracing::info!("interrupted; shutting down"),
                _ = exit.notified() => tracing::info!("shutting down"),
                _ = sigterm => {
                    // SIGTERM drains: participants move to other nodes, then the node exits
                    // (at the latest at --drain-deadline). A second signal stops at once.
                    crate::actors::drain::start(&node.shared, &node.rooms, "sigterm");
                    tokio::select! {
                        _ = exit.notified() => tracing::info!("drained; shutting down"),
                        _ = tokio::signal::ctrl_c() => tracing::info!("interrupted while draining"),
                        _ = async { if let Some(t) = term.as_mut() { t.recv().await; } } => tracing::info!("second SIGTERM while draining"),
                    }
                }
            }
            stopper.stop(true).await;
        });
        tracing::info!(%addr, "demo page at http://{addr}/");
        server.await?;
        anyhow::Ok(())
    })?;
    media_rt.shutdown_background();
    Ok(())
}

fn init_tracing(json: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        tracing_subscriber::EnvFilter::new(
            "info,rtc=error,rtc_ice=error,rtc_dtls=error,rtc_srtp=error",
        )
    });
    // No colour codes in files or pipes.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stdout()));
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}
