//! Tiny hand-made ELF "kernels" for tests that need a guest to misbehave in
//! a precise way (halt forever, fault, write the exit port) without Linux.

/// Guest physical (and virtual: identity-mapped) load address and entry.
pub const LOAD_ADDR: u64 = 0x10_0000;

/// A 64-bit ELF executable with one PT_LOAD segment holding `code` at
/// [`LOAD_ADDR`], entered there in long mode (no PVH note).
pub fn tiny_elf(code: &[u8]) -> Vec<u8> {
    const EHDR: usize = 64;
    const PHDR: usize = 56;
    let code_off = (EHDR + PHDR) as u64;
    let mut f = Vec::new();
    f.extend_from_slice(b"\x7fELF");
    f.extend_from_slice(&[2, 1, 1, 0]); // 64-bit, little endian, version 1, SysV
    f.extend_from_slice(&[0; 8]);
    f.extend_from_slice(&2u16.to_le_bytes()); // ET_EXEC
    f.extend_from_slice(&0x3eu16.to_le_bytes()); // x86-64
    f.extend_from_slice(&1u32.to_le_bytes());
    f.extend_from_slice(&LOAD_ADDR.to_le_bytes()); // e_entry
    f.extend_from_slice(&(EHDR as u64).to_le_bytes()); // e_phoff
    f.extend_from_slice(&0u64.to_le_bytes()); // e_shoff
    f.extend_from_slice(&0u32.to_le_bytes()); // e_flags
    f.extend_from_slice(&u16::try_from(EHDR).expect("64-byte header").to_le_bytes());
    f.extend_from_slice(&u16::try_from(PHDR).expect("56-byte entry").to_le_bytes());
    f.extend_from_slice(&1u16.to_le_bytes()); // e_phnum
    f.extend_from_slice(&64u16.to_le_bytes()); // e_shentsize
    f.extend_from_slice(&0u16.to_le_bytes()); // e_shnum
    f.extend_from_slice(&0u16.to_le_bytes()); // e_shstrndx
    assert_eq!(f.len(), EHDR);
    f.extend_from_slice(&1u32.to_le_bytes()); // PT_LOAD
    f.extend_from_slice(&5u32.to_le_bytes()); // R+X
    f.extend_from_slice(&code_off.to_le_bytes());
    f.extend_from_slice(&LOAD_ADDR.to_le_bytes()); // vaddr
    f.extend_from_slice(&LOAD_ADDR.to_le_bytes()); // paddr
    f.extend_from_slice(&(code.len() as u64).to_le_bytes());
    f.extend_from_slice(&(code.len() as u64).to_le_bytes());
    f.extend_from_slice(&0x1000u64.to_le_bytes());
    assert_eq!(f.len(), EHDR + PHDR);
    f.extend_from_slice(code);
    f
}

/// `cli; hlt; jmp .-1`: stops forever with interrupts off.
pub const HALT_FOREVER: &[u8] = &[0xfa, 0xf4, 0xeb, 0xfd];
/// `mov al, 42; out 0xf4, al; hlt`: leaves through Ferry's exit port.
pub const EXIT_42: &[u8] = &[0xb0, 42, 0xe6, 0xf4, 0xf4];
/// `int3` with Ferry's empty boot IDT: #GP, double fault, triple fault.
pub const TRIPLE_FAULT: &[u8] = &[0xcc];
/// `mov eax, 0x30000000; jmp rax`: runs off into guest-physical space with
/// no memory behind it, which KVM cannot fetch or emulate.
pub const JUMP_INTO_NOTHING: &[u8] = &[0xb8, 0x00, 0x00, 0x00, 0x30, 0xff, 0xe0];
