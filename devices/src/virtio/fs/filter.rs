//! Request classes the worker cares about before and after the server:
//! what the guest may do is decided in `policy`, on the server's own copy
//! of each request.

use fuse_backend_rs::abi::fuse_abi::Opcode;

fn is(opcode: u32, op: Opcode) -> bool {
    opcode == op as u32
}

/// Whether `opcode` is one fuse-backend-rs has a variant for. It turns the
/// number into its `Opcode` enum with a transmute, so 0, 7 and 19 (gaps in
/// the numbering) would be undefined behaviour inside the library (the
/// fuzzer hit it: SIGILL when its trace log printed one). Numbers from 50
/// up it maps to `MaxOpcode` itself.
pub fn is_known(opcode: u32) -> bool {
    matches!(opcode, 1..=6 | 8..=18 | 20..=49) || opcode >= Opcode::MaxOpcode as u32
}

/// SETUPMAPPING or REMOVEMAPPING: changes what the DAX window shows.
pub fn changes_dax_mappings(opcode: u32) -> bool {
    is(opcode, Opcode::SetupMapping) || is(opcode, Opcode::RemoveMapping)
}

/// WRITE, SETATTR, FALLOCATE, COPY_FILE_RANGE: may make a file longer.
pub fn may_grow_file(opcode: u32) -> bool {
    [
        Opcode::Setattr,
        Opcode::Write,
        Opcode::Fallocate,
        Opcode::CopyFileRange,
    ]
    .into_iter()
    .any(|op| is(opcode, op))
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
