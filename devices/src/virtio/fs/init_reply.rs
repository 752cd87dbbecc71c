//! Ferry's own terms in the FUSE INIT reply. `PassthroughFs` asks only for
//! the options it implements itself (readdirplus and the like), and the
//! server then caps writes at 4 KiB and requests at 32 pages and leaves the
//! guest one synchronous read at a time: measured, sequential writes ran at
//! a fraction of virtiofsd's. Request size and ordering are the transport's
//! terms, not the file system's: the queue workers take chains of any size,
//! and the options below change only how the guest batches and orders its
//! requests. So, once the server has written its reply, the worker adds
//! them (where the guest offered them) and raises the request size limit.

use fuse_backend_rs::abi::fuse_abi::{FsOptions, InHeader, InitIn, InitOut, OutHeader};
use virtio_queue::DescriptorChain;
use vm_memory::{ByteValued, Bytes, GuestAddress, GuestMemoryMmap};

/// Options added to what the file system asked for, where the guest offers
/// them. Not WRITEBACK_CACHE: it changes when host processes see guest
/// writes, which is the file system's policy, not the transport's.
fn transport_options() -> FsOptions {
    FsOptions::ASYNC_READ
        | FsOptions::BIG_WRITES
        | FsOptions::MAX_PAGES
        | FsOptions::PARALLEL_DIROPS
        | FsOptions::AUTO_INVAL_DATA
        | FsOptions::ASYNC_DIO
}

/// Pages per request with MAX_PAGES (Linux's FUSE_MAX_MAX_PAGES, and what
/// fuse-backend-rs sizes its buffers for): 1 MiB requests.
const MAX_PAGES: u16 = 256;
const PAGE: u32 = 4096;

type Chain<'a> = DescriptorChain<&'a GuestMemoryMmap>;

/// The writable buffers of `chain`, in order.
fn writable(chain: Chain<'_>) -> Vec<(GuestAddress, usize)> {
    chain
        .filter(|d| d.is_write_only())
        .map(|d| (d.addr(), d.len() as usize))
        .collect()
}

/// Reads (`buf` filled) or writes (`buf` copied out) at byte `offset` of
/// the buffers taken as one stream. False if they are too short.
fn access(
    mem: &GuestMemoryMmap,
    bufs: &[(GuestAddress, usize)],
    mut offset: usize,
    buf: &mut [u8],
    write: bool,
) -> bool {
    let mut done = 0;
    for &(addr, len) in bufs {
        if offset >= len {
            offset -= len;
            continue;
        }
        let n = (len - offset).min(buf.len() - done);
        // The guest names the address (and may rewrite the descriptor
        // after the chain was walked): near the top it must not wrap.
        let Some(at) = addr.0.checked_add(offset as u64).map(GuestAddress) else {
            return false;
        };
        let part = &mut buf[done..done + n];
        let ok = if write {
            mem.write_slice(part, at).is_ok()
        } else {
            mem.read_slice(part, at).is_ok()
        };
        if !ok {
            return false;
        }
        done += n;
        offset = 0;
        if done == buf.len() {
            return true;
        }
    }
    false
}

/// Amends a successful INIT reply the server wrote into `chain` (the
/// request is read from the same chain). Returns the options added.
pub(super) fn amend(mem: &GuestMemoryMmap, chain: Chain<'_>) -> Option<FsOptions> {
    let readable: Vec<(GuestAddress, usize)> = chain
        .clone()
        .filter(|d| !d.is_write_only())
        .map(|d| (d.addr(), d.len() as usize))
        .collect();
    let mut init_in = InitIn::default();
    if !access(
        mem,
        &readable,
        std::mem::size_of::<InHeader>(),
        init_in.as_mut_slice(),
        false,
    ) {
        return None;
    }
    let out = writable(chain);
    let mut header = OutHeader::default();
    let mut reply = InitOut::default();
    let at = std::mem::size_of::<OutHeader>();
    if !access(mem, &out, 0, header.as_mut_slice(), false)
        || header.error != 0
        || (header.len as usize) < at + std::mem::size_of::<InitOut>()
        || !access(mem, &out, at, reply.as_mut_slice(), false)
    {
        // An error, or an old guest's short reply: leave it as it is.
        return None;
    }
    let offered = FsOptions::from_bits_truncate(u64::from(init_in.flags));
    let added = offered & transport_options();
    // The flags word holds the low half (FsOptions are 64 bits since 7.36).
    reply.flags |= (added.bits() & 0xffff_ffff) as u32;
    if added.contains(FsOptions::MAX_PAGES) {
        reply.max_pages = MAX_PAGES;
        reply.max_write = u32::from(MAX_PAGES) * PAGE;
    } else if added.contains(FsOptions::BIG_WRITES) {
        reply.max_write = reply.max_write.max(32 * PAGE);
    }
    access(mem, &out, at, reply.as_mut_slice(), true).then_some(added)
}

#[cfg(test)]
mod tests {
    use super::super::harness::{fuse_request, Harness, INIT};
    use super::*;

    /// The options' low half: the INIT flags word.
    fn low(options: FsOptions) -> u32 {
        (options.bits() & 0xffff_ffff) as u32
    }

    /// A buffer the guest placed at the top of the address space: no
    /// access, and no overflow (a debug build's worker panicked; issue 14
    /// finding 8).
    #[test]
    fn buffers_at_the_top_of_the_address_space_are_refused() {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
        let mut buf = [0u8; 8];
        let bufs = [(GuestAddress(u64::MAX - 4), 64usize)];
        assert!(!access(&mem, &bufs, 16, &mut buf, false));
        assert!(!access(&mem, &bufs, 16, &mut buf, true));
        // Where the sum fits, an address outside memory is still refused.
        assert!(!access(
            &mem,
            &[(GuestAddress(2 << 20), 64)],
            8,
            &mut buf,
            false
        ));
        assert!(access(&mem, &[(GuestAddress(0), 64)], 8, &mut buf, false));
    }

    fn init_with_flags(flags: u32) -> InitOut {
        let mut h = Harness::new(false);
        let body: Vec<u8> = [7u32, 31, 0x20000, flags]
            .iter()
            .flat_map(|w| w.to_le_bytes())
            .collect();
        let (len, error, reply) = h.request(&fuse_request(INIT, 1, 0, &body));
        assert_eq!(error, 0);
        assert!(len as usize >= 16 + std::mem::size_of::<InitOut>());
        let mut out = InitOut::default();
        out.as_mut_slice()
            .copy_from_slice(&reply[16..16 + std::mem::size_of::<InitOut>()]);
        out
    }

    #[test]
    fn offered_transport_options_are_taken_with_1_mib_requests() {
        let all = low(transport_options());
        let out = init_with_flags(all | low(FsOptions::DO_READDIRPLUS));
        assert_eq!(out.flags & all, all);
        assert_ne!(out.flags & low(FsOptions::DO_READDIRPLUS), 0);
        assert_eq!(out.max_pages, 256);
        assert_eq!(out.max_write, 1 << 20);
    }

    #[test]
    fn options_the_guest_did_not_offer_stay_off() {
        let out = init_with_flags(low(FsOptions::ASYNC_READ));
        let others = low(transport_options() - FsOptions::ASYNC_READ);
        assert_eq!(out.flags & others, 0);
        assert_ne!(out.flags & low(FsOptions::ASYNC_READ), 0);
        assert_eq!(out.max_pages, 0);
        assert_eq!(out.max_write, 4096, "the server's own limit stays");
    }
}
