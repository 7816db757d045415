//! `nats-auth`: writes the `authorization { users = [...] }` block of the cluster's
//! nats-server config (README "NATS security", `protocol::nats_auth`) and one password file
//! per user: `admin`, `coordinator` and one user per node, named after the node id.
//!
//! ```text
//! nats-auth --secrets /etc/media/nats-secrets --node eu-1 --node eu-2 --out /etc/nats/auth.conf
//! nats-server --signal reload     # after adding a node: the running servers take it
//! ```
//!
//! A password file that exists is kept, so running it again with one more `--node` adds
//! that node's user and leaves every other password as it was. Files are created mode 0600.

use anyhow::Context;
use clap::Parser;
use protocol::nats_auth::{self, User};
use protocol::NodeId;
use std::io::Write;
use std::path::{Path, PathBuf};

#[derive(Parser)]
#[command(
    name = "nats-auth",
    about = "NATS users and permissions of the media cluster"
)]
struct Cli {
    /// Directory of the password files (`<user>.password`, user escaped as a subject token).
    #[arg(long)]
    secrets: PathBuf,
    /// A node id (repeat for each node).
    #[arg(long = "node")]
    nodes: Vec<String>,
    /// Where to write the authorization block [default: standard output].
    #[arg(long)]
    out: Option<PathBuf>,
}

fn password(dir: &Path, user: &str) -> anyhow::Result<String> {
    let path = dir.join(format!("{}.password", protocol::cluster::token(user)));
    if let Ok(text) = std::fs::read_to_string(&path) {
        let p = text.trim();
        anyhow::ensure!(!p.is_empty(), "{} is empty", path.display());
        return Ok(p.to_owned());
    }
    let p = format!("{:032x}", rand::random::<u128>());
    write_private(&path, p.as_bytes())?;
    Ok(p)
}

fn write_private(path: &Path, content: &[u8]) -> anyhow::Result<()> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options
        .open(path)
        .with_context(|| format!("writing {}", path.display()))?;
    file.write_all(content)?;
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    std::fs::create_dir_all(&cli.secrets)
        .with_context(|| format!("creating {}", cli.secrets.display()))?;
    let mut users = vec![
        User::admin(password(&cli.secrets, nats_auth::ADMIN_USER)?),
        User::coordinator(password(&cli.secrets, nats_auth::COORDINATOR_USER)?),
    ];
    for id in &cli.nodes {
        let node = NodeId::new(id.as_str()).with_context(|| format!("node id {id:?}"))?;
        users.push(User::node(&node, password(&cli.secrets, id)?));
    }
    let block = nats_auth::authorization_block(&users);
    match &cli.out {
        Some(path) => write_private(path, block.as_bytes())?,
        None => print!("{block}"),
    }
    Ok(())
}
