//! The `pysandbox` binary: dispatches to the command line module.

mod cli;

fn main() {
    std::process::exit(cli::main());
}
