//! Ferry's fuzz targets as plain functions: `fuzz_targets/*.rs` wrap them
//! for libFuzzer, and `tests/replay_corpus.rs` replays the kept corpus
//! through them with `cargo test`. See README.md.

pub mod cli_target;
pub mod fs_target;
pub mod fuse_gen;
pub mod input;
pub mod net_target;
pub mod oracle;
pub mod pci_target;
pub mod sandbox;

/// virtio-fs requests through the real queue worker (see [`fs_target`]).
pub fn fs_request(data: &[u8]) {
    fs_target::run(data);
}

/// PCI config space and virtio-pci BAR registers (see [`pci_target`]).
pub fn pci_config(data: &[u8]) {
    pci_target::run(data);
}

/// The virtio-net worker between a hostile guest and backend (see
/// [`net_target`]).
pub fn net_frames(data: &[u8]) {
    net_target::run(data);
}

/// The command line and `--fs` parsing (see [`cli_target`]).
pub fn cli(data: &[u8]) {
    cli_target::run(data);
}
