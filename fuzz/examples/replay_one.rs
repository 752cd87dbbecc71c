//! Runs one input through one target: `cargo run --example replay_one --
//! TARGET FILE` (for reproducing a crash without libFuzzer).
fn main() {
    let mut args = std::env::args().skip(1);
    let (Some(target), Some(file)) = (args.next(), args.next()) else {
        eprintln!("usage: replay_one TARGET FILE");
        std::process::exit(2);
    };
    let data = std::fs::read(&file).expect("input file");
    let _ = ferry_fuzz::sandbox::sandbox();
    match target.as_str() {
        "fs_request" => ferry_fuzz::fs_request(&data),
        "pci_config" => ferry_fuzz::pci_config(&data),
        "cli" => ferry_fuzz::cli(&data),
        t => panic!("unknown target {t}"),
    }
    println!("{target} {file}: ok");
}
