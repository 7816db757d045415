//! The `coordinator` program, built with the tests so that they can run real coordinator
//! processes.

fn main() -> anyhow::Result<()> {
    coordinator::cli::main()
}
