use std::process::ExitCode;

use clap::Parser;
use kvsync::cli::{Cli, Command};

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Crd => {
            print!("{}", kvsync::crd::crd_yaml());
            ExitCode::SUCCESS
        }
    }
}
