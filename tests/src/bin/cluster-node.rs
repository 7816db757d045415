//! The `node` program, built with the tests so that they can run real node processes (kill
//! them, stop them, drain them) without depending on another package's binary.

fn main() -> anyhow::Result<()> {
    node::cli::main()
}
