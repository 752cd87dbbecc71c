//! `ferry`: boot a Linux guest under KVM.

use clap::Parser;
use ferry::{cli, exit, run, vm};

fn main() {
    // Under `ferry run` this binary is also the guest's init.
    run::guest_init::run_if_guest_init();
    let cli = cli::Cli::parse();
    let level = cli.machine().log_level;
    // fuse-backend-rs and virtio-queue log what a guest causes (every stat
    // in a deleted share, every pop from a broken ring) at error level,
    // once per request: a guest could flood the host's log. Shown from
    // --log-level debug on.
    let library = if level >= log::LevelFilter::Debug {
        level
    } else {
        log::LevelFilter::Off
    };
    env_logger::Builder::new()
        .filter_level(level)
        .filter_module("fuse_backend_rs", library)
        .filter_module("virtio_queue", library)
        .parse_env("RUST_LOG")
        .format_target(false)
        .init();
    let code = match cli.command {
        Some(cli::Command::Run(args)) => run::run(&args),
        None => boot(cli.boot),
    };
    std::process::exit(code);
}

/// `ferry --kernel ...`: the console on this terminal, the guest's status
/// as Ferry's.
fn boot(args: cli::BootArgs) -> i32 {
    let config = vm::VmConfig {
        boot: args,
        console: vm::ConsoleMode::Terminal,
        timeout: None,
        violation_status: 1,
    };
    match vm::run(config) {
        Ok(reason) => {
            if let exit::ExitReason::Stalled(msg) | exit::ExitReason::KvmError(msg) = &reason {
                eprintln!("ferry: {msg}");
            }
            reason.exit_code()
        }
        Err(e) => {
            // One line: the error and its causes.
            eprintln!("ferry: {e:#}");
            1
        }
    }
}
