//! Times the pieces of one `fs_request` run: `cargo run --release
//! --example bench_setup`.
use std::time::Instant;

fn main() {
    let _ = ferry_fuzz::sandbox::sandbox();
    let n = 300;
    let t = Instant::now();
    for _ in 0..n {
        let h = ferry_devices::virtio::fs::harness::Harness::new(false);
        drop(h);
    }
    println!("Harness::new + drop: {:?}/run", t.elapsed() / n);
    let t = Instant::now();
    for _ in 0..n {
        ferry_fuzz::fs_request(&[0]);
    }
    println!("fs_request(INIT only): {:?}/run", t.elapsed() / n);
    let seed = std::fs::read("corpus/fs_request/seed-lookup-open-read-write").unwrap();
    let t = Instant::now();
    for _ in 0..n {
        ferry_fuzz::fs_request(&seed);
    }
    println!("fs_request(seed, 4 requests): {:?}/run", t.elapsed() / n);
    let t = Instant::now();
    for _ in 0..n {
        ferry_fuzz::pci_config(&[0, 0, 0xff]);
    }
    println!("pci_config(empty): {:?}/run", t.elapsed() / n);
}
