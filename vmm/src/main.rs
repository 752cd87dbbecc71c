//! `ferry`: boot a Linux guest under KVM.

mod allocator;
mod cli;
mod console;
mod control;
mod exit;
mod fs_option;
mod loader;
mod memory;
mod terminal;
mod vcpu;
mod vm;
mod vm_ops;
mod watchdog;

use clap::Parser;

fn main() {
    let cli = cli::Cli::parse();
    env_logger::Builder::new()
        .filter_level(cli.log_level)
        .parse_env("RUST_LOG")
        .format_target(false)
        .init();
    let code = match vm::run(&cli) {
        Ok(code) => code,
        Err(e) => {
            // One line: the error and its causes.
            eprintln!("ferry: {e:#}");
            1
        }
    };
    std::process::exit(code);
}
