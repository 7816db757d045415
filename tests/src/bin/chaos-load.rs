//! `chaos load` as a program of its own (`chaos-load ARGS` takes the arguments of
//! `chaos load`), built with the tests so that they run the real command as a child process
//! without depending on another package's binary, as `cluster-node` does for the node.

fn main() -> std::process::ExitCode {
    chaos::load::cli_main()
}
