#![no_main]
//! Thin wrapper: the decoding and driving live in `ferry_fuzz::net_frames`,
//! so `cargo test` replays the corpus through the same code.

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    ferry_fuzz::net_frames(data);
});
