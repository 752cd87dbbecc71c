//! Runs each input of a directory through a target and reports the inputs
//! after which the process holds more descriptors than before:
//! `cargo run --example fd_leaks -- TARGET DIR`.
fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd")
        .map(|d| d.count())
        .unwrap_or(0)
}

fn main() {
    let mut args = std::env::args().skip(1);
    let (Some(target), Some(dir)) = (args.next(), args.next()) else {
        eprintln!("usage: fd_leaks TARGET DIR");
        std::process::exit(2);
    };
    let run: fn(&[u8]) = match target.as_str() {
        "fs_request" => ferry_fuzz::fs_request,
        "pci_config" => ferry_fuzz::pci_config,
        "cli" => ferry_fuzz::cli,
        t => panic!("unknown target {t}"),
    };
    let _ = ferry_fuzz::sandbox::sandbox();
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .expect("input directory")
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    // Warm up once (lazy statics, the logger).
    if let Some(f) = files.first() {
        run(&std::fs::read(f).unwrap());
    }
    let mut leaky = 0;
    for f in &files {
        let data = std::fs::read(f).unwrap();
        let before = open_fds();
        run(&data);
        let after = open_fds();
        if after > before {
            leaky += 1;
            println!("{}: {} more descriptors", f.display(), after - before);
        }
    }
    println!("{} of {} inputs left descriptors open", leaky, files.len());
}
