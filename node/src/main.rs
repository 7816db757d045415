//! `node`: run a media node, or mint a join token (see [`node::cli`]).

fn main() -> anyhow::Result<()> {
    node::cli::main()
}
