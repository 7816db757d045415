//! `coordinator`: run one coordinator of the cluster (see [`coordinator::cli`]).

fn main() -> anyhow::Result<()> {
    coordinator::cli::main()
}
