//! Opcodes the worker answers before the server: what the guest may do is
//! decided in `policy`, on the server's own copy of each request.

use fuse_backend_rs::abi::fuse_abi::Opcode;

/// Whether `opcode` is one fuse-backend-rs has a variant for. The library
/// turned the number into its `Opcode` enum with a transmute, so 0, 7 and
/// 19 (gaps in the numbering) were undefined behaviour (the fuzzer hit it:
/// SIGILL when its trace log printed one). The copy Ferry carries is fixed;
/// these are still answered ENOSYS without reaching it. Numbers from 50 up
/// the library maps to `MaxOpcode` itself.
pub fn is_known(opcode: u32) -> bool {
    matches!(opcode, 1..=6 | 8..=18 | 20..=49) || opcode >= Opcode::MaxOpcode as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gaps_in_the_opcode_numbers_are_unknown() {
        for gap in [0, 7, 19] {
            assert!(!is_known(gap));
        }
        for known in [
            Opcode::Lookup,
            Opcode::Init,
            Opcode::RemoveMapping,
            Opcode::MaxOpcode,
        ] {
            assert!(is_known(known as u32));
        }
        assert!(is_known(u32::MAX));
    }
}
