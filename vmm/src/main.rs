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
    // Colours decided here, once, and stderr written as a plain pipe:
    // env_logger asks before every line whether stderr is a terminal
    // (TCGETS, an ioctl the vCPU and file-server filters forbid), so the
    // first line a sandboxed thread logged stopped Ferry whenever stderr
    // was a terminal and the level was info or more.
    let style = if std::io::IsTerminal::is_terminal(&std::io::stderr()) {
        env_logger::WriteStyle::Always
    } else {
        env_logger::WriteStyle::Never
    };
    env_logger::Builder::new()
        .target(env_logger::Target::Pipe(Box::new(std::io::stderr())))
        .write_style(style)
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
    if let Some(a) = args.machine.fs.iter().find(|a| a.guest.is_some()) {
        eprintln!(
            "ferry: --fs tag={}: guest= is for `ferry run`; here the guest mounts the share \
             where it likes (mount -t virtiofs {} /PATH)",
            a.share.tag, a.share.tag
        );
        return 2;
    }
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
