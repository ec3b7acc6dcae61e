//! `ting-loadtest`: the load tester on its own (`ting loadtest` runs the same code).

use clap::Parser;

#[derive(Parser)]
#[command(name = "ting-loadtest", version, about = "Load tester for Ting")]
struct Cli {
    #[command(flatten)]
    args: ting_loadtest::cli::Args,
}

fn main() -> anyhow::Result<()> {
    ting_loadtest::cli::run(Cli::parse().args)
}
