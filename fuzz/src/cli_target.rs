//! `cli`: Ferry's command line. Arguments split at NUL bytes; an argument
//! starting with a byte below 0x20 is a known flag (then the rest, if any,
//! is the next argument), so inputs reach every option quickly. The whole
//! vector goes to `Cli::try_parse_from` (errors and help are rendered too),
//! and every argument on its own to the value parsers (`parse_fs`,
//! `parse_size`, `parse_duration`). None of it may panic.

use std::ffi::OsString;
use std::os::unix::ffi::OsStringExt;

use clap::Parser;
use ferry::cli::{parse_duration, parse_size, Cli, Command};
use ferry::fs_option::{check_unique_tags, parse_fs};

const TOKENS: &[&str] = &[
    "--kernel",
    "--fs",
    "run",
    "--",
    "--timeout",
    "--cpus",
    "--memory",
    "--rw",
    "--cmdline",
    "--initramfs",
    "--log-level",
    "--stall-timeout",
    "--help",
    "--version",
    "tag=a,path=/tmp",
    "tag=b,path=/tmp,dax=on,cache-size=64M,queues=4,readonly=on,cache=never",
    "-h",
    "-V",
    "help",
    "/dev/null",
    "512M",
    "--fs=tag=c,path=.",
];

pub fn run(data: &[u8]) {
    let mut args: Vec<OsString> = vec!["ferry".into()];
    for piece in data.split(|&b| b == 0).take(64) {
        match piece.split_first() {
            Some((&first, rest)) if usize::from(first) < TOKENS.len() => {
                args.push(TOKENS[usize::from(first)].into());
                if !rest.is_empty() {
                    args.push(OsString::from_vec(rest.to_vec()));
                }
            }
            _ => args.push(OsString::from_vec(piece.to_vec())),
        }
    }
    match Cli::try_parse_from(&args) {
        Ok(cli) => {
            let machine = cli.machine();
            let shares: Vec<_> = machine.fs.iter().map(|a| a.share.clone()).collect();
            let _ = check_unique_tags(&shares);
            if let Some(Command::Run(run)) = &cli.command {
                std::hint::black_box(&run.command);
            }
            std::hint::black_box(format!("{cli:?}"));
        }
        Err(e) => {
            std::hint::black_box(e.kind());
            std::hint::black_box(e.to_string());
            std::hint::black_box(e.render().to_string());
        }
    }
    for arg in &args[1..] {
        let s = arg.to_string_lossy();
        let _ = std::hint::black_box(parse_fs(&s));
        let _ = std::hint::black_box(parse_size(&s));
        let _ = std::hint::black_box(parse_duration(&s));
    }
}
