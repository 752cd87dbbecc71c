//! The DAX window: a range of Ferry's address space that the guest sees as
//! the virtio-fs cache (shared memory region 0, a 64-bit BAR backed by a KVM
//! memory slot). FUSE_SETUPMAPPING maps a piece of a host file into it with
//! `mmap(MAP_SHARED | MAP_FIXED)`, so the guest reads and writes the host's
//! page cache directly; FUSE_REMOVEMAPPING makes the range inaccessible
//! again (`PROT_NONE`, as the whole reservation starts).
//!
//! Two things can make KVM fail to reach a window page: the guest touching
//! an unmapped range, or a file truncated under its mapping. Pages past a
//! file's end are parked on zero pages ([`DaxWindow::repair_truncated`],
//! every second and on a fault) and get the file back when it grows again
//! ([`DaxWindow::restore_grown`]); an unmapped page the guest faulted on
//! gets a zero page ([`DaxWindow::handle_fault`]). Queue workers copy to and
//! from window pages only after [`DaxWindow::pin`] checked that they are
//! mapped, inside their file and writable as needed, and hold the pin until
//! done.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, RawFd};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard, TryLockError};

use fuse_backend_rs::abi::virtio_fs::{RemovemappingOne, SetupmappingFlags};
use fuse_backend_rs::transport::FsCacheReqHandler;
use vm_memory::{GuestMemory, GuestMemoryMmap, GuestMemoryRegion};

/// The smallest window: Linux maps in 2 MiB ranges (FUSE_DAX_SZ).
pub const DAX_WINDOW_MIN: u64 = 2 << 20;
const NOT_SHOWN: u64 = u64::MAX;

/// One file range mapped into the window, kept so a host truncation can be
/// repaired and so the mapping's file stays open for `fstat`.
struct Mapping {
    len: u64,
    file: Arc<File>,
    foffset: u64,
    writable: bool,
    /// The first `backed` bytes map the file; the rest is parked on zero
    /// pages because the file was truncated (see `repair_truncated`).
    backed: u64,
}

type Mappings = BTreeMap<u64, Mapping>;

/// Whether a window operation may wait for the mappings' lock.
#[derive(Clone, Copy)]
enum Wait {
    Yes,
    No,
}

/// Held while a worker copies to or from window pages: no mapping changes
/// meanwhile.
pub struct DaxPin<'a>(#[allow(dead_code)] RwLockReadGuard<'a, Mappings>);

thread_local! {
    /// This thread holds a pin: a mapping change it asked for would wait
    /// for its own read lock, forever.
    static PINNED: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

impl Drop for DaxPin<'_> {
    fn drop(&mut self) {
        PINNED.with(|p| p.set(false));
    }
}

#[derive(Debug, thiserror::Error)]
pub enum PinError {
    #[error("buffer {gpa:#x}+{len:#x} lies in an unmapped part of the DAX window")]
    Unmapped { gpa: u64, len: u64 },
    #[error("buffer {gpa:#x}+{len:#x} lies past the end of a file mapped in the DAX window")]
    PastEof { gpa: u64, len: u64 },
    #[error("buffer {gpa:#x}+{len:#x} is written but mapped read-only in the DAX window")]
    ReadOnly { gpa: u64, len: u64 },
}

pub struct DaxWindow {
    base: usize,
    size: u64,
    page: u64,
    /// Where the guest sees the window (its BAR), or NOT_SHOWN.
    guest_addr: AtomicU64,
    /// Mappings by window offset; they never overlap.
    mappings: RwLock<Mappings>,
    /// How many mappings have parked pages.
    parked: AtomicUsize,
    /// Zero pages for faults in the window during a worker's copy.
    faults: Option<super::window_faults::Guard>,
    /// What parked pages and fault fills show (see [`Scratch`]).
    scratch: Scratch,
}

/// One shared 2 MiB memory file behind every parked page and every
/// unmapped page the guest faulted on, each window page at its offset
/// modulo 2 MiB. Private anonymous pages there cost host memory per page
/// the guest writes, so a guest that parked a 64 GiB window and wrote to
/// it took 64 GiB beyond `--memory`; these cost 2 MiB per window at most.
/// The pages read as zeros again whenever more pages are parked or
/// filled; in between, a guest write to one of them shows in the others
/// at the same offset (all past some file's end, or outside any mapping,
/// where a local file system would raise SIGBUS).
struct Scratch {
    file: File,
    /// A writable view of the file, for zeroing it (MADV_REMOVE).
    view: usize,
}

const SCRATCH_LEN: u64 = 2 << 20;

impl Scratch {
    fn new() -> io::Result<Scratch> {
        // SAFETY: a plain system call on a constant name.
        let fd = unsafe { libc::memfd_create(c"ferry-dax-scratch".as_ptr(), libc::MFD_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: a fresh descriptor we own.
        let file = unsafe { File::from_raw_fd(fd) };
        file.set_len(SCRATCH_LEN)?;
        // SAFETY: a new shared mapping of our own file, placed by the kernel.
        let view = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                SCRATCH_LEN as usize,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd,
                0,
            )
        };
        if view == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        Ok(Scratch {
            file,
            view: view as usize,
        })
    }

    /// Frees the file's pages: every page mapping it reads zeros.
    fn zero(&self) {
        // SAFETY: our own shared writable mapping of the whole file.
        unsafe {
            libc::madvise(
                self.view as *mut libc::c_void,
                SCRATCH_LEN as usize,
                libc::MADV_REMOVE,
            );
        }
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        // SAFETY: the view is ours and nothing refers to it any more.
        unsafe { libc::munmap(self.view as *mut libc::c_void, SCRATCH_LEN as usize) };
    }
}

fn einval(what: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, what)
}

impl DaxWindow {
    /// Reserves `size` bytes (a power of two, at least [`DAX_WINDOW_MIN`]).
    /// The reservation costs nothing until the guest touches it.
    pub fn new(size: u64) -> io::Result<Self> {
        if !size.is_power_of_two() || size < DAX_WINDOW_MIN {
            return Err(einval(format!(
                "DAX window size {size:#x}: must be a power of two of at least 2 MiB"
            )));
        }
        let len = usize::try_from(size).map_err(|_| einval("DAX window too large".into()))?;
        // SAFETY: a fresh inaccessible reservation; nothing refers to it.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_NONE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        if base == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: sysconf has no memory effects.
        let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) }.max(4096) as u64;
        Ok(DaxWindow {
            base: base as usize,
            size,
            page,
            guest_addr: AtomicU64::new(NOT_SHOWN),
            mappings: RwLock::new(BTreeMap::new()),
            parked: AtomicUsize::new(0),
            faults: Some(super::window_faults::guard(base as u64, size, page)),
            scratch: Scratch::new()?,
        })
    }

    /// Records where the guest sees the window (`None`: nowhere).
    pub fn set_guest_addr(&self, addr: Option<u64>) {
        self.guest_addr
            .store(addr.unwrap_or(NOT_SHOWN), Ordering::Release);
    }

    /// Where the guest sees the window, as last recorded (the vCPUs'
    /// view: KVM's memory slot).
    fn shown(&self) -> Option<u64> {
        let addr = self.guest_addr.load(Ordering::Acquire);
        (addr != NOT_SHOWN).then_some(addr)
    }

    /// Where `mem`, a queue worker's view of guest memory, shows the window:
    /// the guest address of its region backed by the window's reservation.
    /// When the guest moves the BAR, the view and [`set_guest_addr`] change
    /// at different moments, and a worker reads buffers through its view,
    /// so its checks and pins must place the window where that view does
    /// (a request read from a window page the pin had not judged faulted
    /// in Ferry: found by the fuzzer).
    ///
    /// [`set_guest_addr`]: DaxWindow::set_guest_addr
    pub fn shown_in(&self, mem: &GuestMemoryMmap) -> Option<u64> {
        mem.iter()
            .find(|r| r.as_ptr() as usize == self.base && r.len() == self.size)
            .map(|r| r.start_addr().0)
    }

    /// The window offsets of guest range `[gpa, gpa + len)` where it
    /// overlaps the window shown at `shown_at`.
    fn window_part(&self, shown_at: Option<u64>, gpa: u64, len: u64) -> Option<(u64, u64)> {
        let base = shown_at?;
        let start = gpa.max(base);
        let end = gpa.saturating_add(len).min(base.saturating_add(self.size));
        (start < end).then(|| (start - base, end - start))
    }

    /// Whether guest range `[gpa, gpa + len)` touches the window shown at
    /// `shown_at`.
    pub fn overlaps(&self, shown_at: Option<u64>, gpa: u64, len: u64) -> bool {
        self.window_part(shown_at, gpa, len).is_some()
    }

    /// Checks that every part of `buffers` (guest address, length, whether
    /// the device writes it) inside the window shown at `shown_at` is
    /// mapped, within its file and writable as needed, and keeps it so
    /// until the pin is dropped. `None`: no buffer touches the window.
    pub fn pin(
        &self,
        shown_at: Option<u64>,
        buffers: impl IntoIterator<Item = (u64, u64, bool)>,
    ) -> Result<Option<DaxPin<'_>>, PinError> {
        let parts: Vec<_> = buffers
            .into_iter()
            .filter_map(|(gpa, len, write)| {
                self.window_part(shown_at, gpa, len)
                    .map(|(off, n)| (gpa, len, off, n, write))
            })
            .collect();
        if parts.is_empty() {
            return Ok(None);
        }
        let mappings = self.read();
        for (gpa, len, off, n, write) in parts {
            let mut at = off;
            while at < off + n {
                let Some((&m_off, m)) = mappings
                    .range(..=at)
                    .next_back()
                    .filter(|(&m_off, m)| m_off + m.len > at)
                else {
                    return Err(PinError::Unmapped { gpa, len });
                };
                if write && !m.writable {
                    return Err(PinError::ReadOnly { gpa, len });
                }
                let upto = (m_off + m.len).min(off + n);
                // The file must still reach the last byte used here.
                let file_end = m.foffset + (upto - m_off);
                let file_len = m.file.metadata().map(|md| md.len()).unwrap_or(0);
                if file_len.next_multiple_of(self.page) < file_end {
                    return Err(PinError::PastEof { gpa, len });
                }
                at = upto;
            }
        }
        PINNED.with(|p| p.set(true));
        Ok(Some(DaxPin(mappings)))
    }

    pub fn size(&self) -> u64 {
        self.size
    }

    /// Where the window starts in Ferry's address space.
    pub fn host_addr(&self) -> u64 {
        self.base as u64
    }

    /// Bytes of host files mapped right now.
    pub fn mapped_bytes(&self) -> u64 {
        self.read().values().map(|m| m.backed).sum()
    }

    fn read(&self) -> RwLockReadGuard<'_, Mappings> {
        self.mappings.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> RwLockWriteGuard<'_, Mappings> {
        self.mappings.write().unwrap_or_else(|e| e.into_inner())
    }

    fn read_if(&self, wait: Wait) -> Option<RwLockReadGuard<'_, Mappings>> {
        match wait {
            Wait::Yes => Some(self.read()),
            Wait::No => match self.mappings.try_read() {
                Ok(g) => Some(g),
                Err(TryLockError::Poisoned(e)) => Some(e.into_inner()),
                Err(TryLockError::WouldBlock) => None,
            },
        }
    }

    fn write_if(&self, wait: Wait) -> Option<RwLockWriteGuard<'_, Mappings>> {
        match wait {
            Wait::Yes => Some(self.write()),
            Wait::No => match self.mappings.try_write() {
                Ok(g) => Some(g),
                Err(TryLockError::Poisoned(e)) => Some(e.into_inner()),
                Err(TryLockError::WouldBlock) => None,
            },
        }
    }

    /// Checks that `[moffset, moffset + len)` is a non-empty, page-aligned
    /// range inside the window.
    fn check_range(&self, moffset: u64, len: u64) -> io::Result<()> {
        let end = moffset.checked_add(len);
        if len == 0
            || !moffset.is_multiple_of(self.page)
            || !len.is_multiple_of(self.page)
            || end.is_none_or(|e| e > self.size)
        {
            return Err(einval(format!(
                "DAX range {moffset:#x}+{len:#x} is not page-aligned inside the {:#x}-byte window",
                self.size
            )));
        }
        Ok(())
    }

    /// Maps `len` bytes of `fd` from `foffset` at window offset `moffset`.
    pub fn map(
        &self,
        foffset: u64,
        moffset: u64,
        len: u64,
        flags: u64,
        fd: RawFd,
    ) -> io::Result<()> {
        self.check_range(moffset, len)?;
        if !foffset.is_multiple_of(self.page) || foffset > i64::MAX as u64 {
            return Err(einval(format!(
                "DAX file offset {foffset:#x} is not page-aligned"
            )));
        }
        // SAFETY: `fd` is open for the duration of this call (the server
        // holds it); the clone is ours.
        let file = unsafe { BorrowedFd::borrow_raw(fd) }.try_clone_to_owned()?;
        let mapping = Mapping {
            len,
            file: Arc::new(File::from(file)),
            foffset,
            // (READ needs nothing: every mapping is readable.)
            writable: flags & SetupmappingFlags::WRITE.bits() != 0,
            backed: len,
        };
        let mut mappings = self.write();
        let mapped = self.map_file(&mapping, moffset, 0, len);
        carve(&mut mappings, moffset, len);
        if let Err(err) = mapped {
            // A failed MAP_FIXED may already have unmapped the old pages:
            // never leave a hole in the reservation.
            self.reserve(moffset, len)?;
            self.recount(&mappings);
            return Err(err);
        }
        mappings.insert(moffset, mapping);
        self.recount(&mappings);
        Ok(())
    }

    /// Takes `[moffset, moffset + len)` out of the window; `len == u64::MAX`
    /// means to the end of the window. Every range is checked before any is
    /// removed.
    pub fn unmap(&self, ranges: &[RemovemappingOne]) -> io::Result<()> {
        let ranges: Vec<(u64, u64)> = ranges
            .iter()
            .map(|r| {
                let len = if r.len == u64::MAX {
                    self.size.saturating_sub(r.moffset)
                } else {
                    r.len
                };
                self.check_range(r.moffset, len).map(|()| (r.moffset, len))
            })
            .collect::<io::Result<_>>()?;
        let mut mappings = self.write();
        for (moffset, len) in ranges {
            self.reserve(moffset, len)?;
            carve(&mut mappings, moffset, len);
        }
        self.recount(&mappings);
        Ok(())
    }

    /// Empties the whole window (device reset).
    pub fn clear(&self) -> io::Result<()> {
        let mut mappings = self.write();
        self.reserve(0, self.size)?;
        mappings.clear();
        self.recount(&mappings);
        Ok(())
    }

    /// KVM could not reach guest memory (at `gpa`, when KVM says): put
    /// zero pages behind window pages past the end of a host-truncated file
    /// and behind the faulting page if it is unmapped. Returns the bytes
    /// made accessible; 0 means the fault was not the window's.
    pub fn handle_fault(&self, gpa: Option<u64>) -> u64 {
        let mut repaired = self.repair_truncated();
        if let Some((off, _)) = gpa.and_then(|g| self.window_part(self.shown(), g, 1)) {
            let page = off - off % self.page;
            let mut mappings = self.write();
            let mapped = mappings
                .range(..=page)
                .next_back()
                .is_some_and(|(&m, map)| m + map.len > page);
            if !mapped && self.fill_scratch(page, self.page).is_ok() {
                // Tracked as an anonymous mapping would be: not at all. A
                // later SETUPMAPPING or REMOVEMAPPING replaces it.
                carve(&mut mappings, page, self.page);
                repaired += self.page;
            }
        }
        repaired
    }

    /// Parks the window pages that lie past the end of their (truncated)
    /// file: zero pages replace them, which KVM can always back. Returns
    /// the bytes parked. Cheap when nothing changed (one `fstat` per mapped
    /// file, under the read lock), so the VMM calls it every second: KVM
    /// does not always report the failed access, it may retry it forever.
    pub fn repair_truncated(&self) -> u64 {
        self.rebalance(true, Wait::Yes).unwrap_or(0)
    }

    /// [`restore_grown`] then [`repair_truncated`], for the VMM's control
    /// loop, which must never wait for the guest: a worker can hold the
    /// window for as long as its request runs (a multi-GiB WRITE from
    /// window pages, a READ from a file that blocks), and a mapping change
    /// queued behind it blocks every later lock. `None`: the window was
    /// busy, nothing done; the next call tries again. Else the bytes
    /// parked.
    ///
    /// [`restore_grown`]: DaxWindow::restore_grown
    /// [`repair_truncated`]: DaxWindow::repair_truncated
    pub fn repair_if_free(&self) -> Option<u64> {
        if self.parked.load(Ordering::SeqCst) > 0 || self.faults_flagged() {
            self.rebalance(false, Wait::No)?;
        }
        self.rebalance(true, Wait::No)
    }

    /// Maps the file back over parked pages that its file covers again (it
    /// grew). The guest's own truncations park pages too, and the guest
    /// keeps its mappings across truncate and extend, so every request
    /// that may grow a file is followed by this. Returns the bytes restored.
    pub fn restore_grown(&self) -> u64 {
        if self.parked.load(Ordering::SeqCst) == 0 && !self.faults_repaired(Wait::Yes) {
            return 0;
        }
        self.rebalance(false, Wait::Yes).unwrap_or(0)
    }

    /// Whether the fault handler put zero pages in the window since the
    /// last call; if so, every mapping's file-backed part is mapped again
    /// (what the pages should show) before anything else.
    fn faults_flagged(&self) -> bool {
        self.faults.as_ref().is_some_and(|g| g.repaired())
    }

    fn faults_repaired(&self, wait: Wait) -> bool {
        let Some(guard) = &self.faults else {
            return false;
        };
        // Taken only with the lock in hand, so a busy window leaves the
        // flag for the next try.
        let Some(mut mappings) = guard.repaired().then(|| self.write_if(wait)).flatten() else {
            return false;
        };
        if !guard.take_repaired() {
            return false;
        }
        log::warn!(
            "virtio-fs: a worker touched DAX window pages that were going away (a host \
             truncation, or a request rewritten after its check); mapping the files again"
        );
        for (&moffset, m) in mappings.iter_mut() {
            if m.backed > 0 && self.map_file(m, moffset, 0, m.backed).is_err() {
                // Leave it to the parking below: zero pages stay.
                m.backed = 0;
            }
        }
        self.recount(&mappings);
        true
    }

    /// Parks (`park`) or restores mappings whose file-backed part no longer
    /// matches their file's size.
    /// `None`: `wait` was [`Wait::No`] and the window was busy.
    fn rebalance(&self, park: bool, wait: Wait) -> Option<u64> {
        if park {
            self.faults_repaired(wait);
        }
        let found = self.out_of_step(&*self.read_if(wait)?, park);
        if found.is_empty() {
            return Some(0);
        }
        let mut mappings = self.write_if(wait)?;
        if park {
            // Announce the park before sampling file sizes: a request that
            // grows a file and then finds `parked` still 0 did so before
            // this point, so the sizes read below already include it.
            self.parked.fetch_add(1, Ordering::SeqCst);
        }
        let mut moved = 0;
        for (moffset, keep) in self.out_of_step(&mappings, park) {
            let Some(m) = mappings.get_mut(&moffset) else {
                continue;
            };
            let done = if park {
                self.fill_scratch(moffset + keep, m.backed - keep)
            } else {
                self.map_file(m, moffset, m.backed, keep - m.backed)
            };
            if done.is_ok() {
                moved += keep.abs_diff(m.backed);
                m.backed = keep;
            }
        }
        self.recount(&mappings);
        Some(moved)
    }

    fn recount(&self, mappings: &Mappings) {
        let parked = mappings.values().filter(|m| m.backed < m.len).count();
        self.parked.store(parked, Ordering::SeqCst);
    }

    /// Mappings to park (file-backed past their file's end) or to restore
    /// (parked pages their file covers again): (window offset, bytes the
    /// file covers now).
    fn out_of_step(&self, mappings: &Mappings, park: bool) -> Vec<(u64, u64)> {
        let mut sizes: HashMap<*const File, u64> = HashMap::new();
        let mut found = Vec::new();
        for (&moffset, m) in mappings.iter() {
            if !park && m.backed == m.len {
                continue;
            }
            let size = *sizes
                .entry(Arc::as_ptr(&m.file))
                .or_insert_with(|| m.file.metadata().map_or(u64::MAX, |md| md.len()));
            let keep = size
                .checked_next_multiple_of(self.page)
                .unwrap_or(u64::MAX)
                .saturating_sub(m.foffset)
                .min(m.len);
            if (park && keep < m.backed) || (!park && keep > m.backed) {
                found.push((moffset, keep));
            }
        }
        found
    }

    /// Maps `len` bytes of `m`'s file, `skip` bytes into the mapping at
    /// window offset `moffset`, writable if `m` is.
    fn map_file(&self, m: &Mapping, moffset: u64, skip: u64, len: u64) -> io::Result<()> {
        let prot = if m.writable {
            libc::PROT_READ | libc::PROT_WRITE
        } else {
            libc::PROT_READ
        };
        // SAFETY: inside our reservation (callers checked the range);
        // MAP_FIXED replaces only window pages, and callers hold the write
        // lock, so no worker is copying there.
        let addr = unsafe {
            libc::mmap(
                (self.base as u64 + moffset + skip) as *mut libc::c_void,
                len as usize,
                prot,
                libc::MAP_SHARED | libc::MAP_FIXED,
                m.file.as_raw_fd(),
                (m.foffset + skip) as libc::off_t,
            )
        };
        if addr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Makes `[moffset, moffset + len)` inaccessible again.
    fn reserve(&self, moffset: u64, len: u64) -> io::Result<()> {
        // SAFETY: the range lies inside our reservation (callers check), and
        // callers hold the write lock, so no worker is copying from it.
        let addr = unsafe {
            libc::mmap(
                (self.base as u64 + moffset) as *mut libc::c_void,
                len as usize,
                libc::PROT_NONE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE | libc::MAP_FIXED,
                -1,
                0,
            )
        };
        if addr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Puts zero pages the guest may read and write at the range: the
    /// scratch file's, so they cost no memory per page (see [`Scratch`]).
    fn fill_scratch(&self, moffset: u64, len: u64) -> io::Result<()> {
        let mut at = moffset;
        while at < moffset + len {
            let offset = at % SCRATCH_LEN;
            let n = (SCRATCH_LEN - offset).min(moffset + len - at);
            // SAFETY: inside our reservation (callers check the range), and
            // callers hold the write lock, so no worker is copying there.
            let addr = unsafe {
                libc::mmap(
                    (self.base as u64 + at) as *mut libc::c_void,
                    n as usize,
                    libc::PROT_READ | libc::PROT_WRITE,
                    libc::MAP_SHARED | libc::MAP_FIXED,
                    self.scratch.file.as_raw_fd(),
                    offset as libc::off_t,
                )
            };
            if addr == libc::MAP_FAILED {
                return Err(io::Error::last_os_error());
            }
            at += n;
        }
        self.scratch.zero();
        Ok(())
    }
}

impl Drop for DaxWindow {
    fn drop(&mut self) {
        // Unguarded before the range is given back and maybe reused.
        drop(self.faults.take());
        // SAFETY: the reservation made in `new`, unmapped once.
        unsafe { libc::munmap(self.base as *mut libc::c_void, self.size as usize) };
    }
}

/// Removes `[start, start + len)` from the tracked mappings, keeping the
/// parts of partly covered mappings on either side.
fn carve(mappings: &mut BTreeMap<u64, Mapping>, start: u64, len: u64) {
    let end = start + len;
    let hit: Vec<u64> = mappings
        .range(..end)
        .filter(|(&m, map)| m + map.len > start)
        .map(|(&m, _)| m)
        .collect();
    for m in hit {
        let Some(old) = mappings.remove(&m) else {
            continue;
        };
        if m < start {
            mappings.insert(
                m,
                Mapping {
                    len: start - m,
                    file: old.file.clone(),
                    foffset: old.foffset,
                    writable: old.writable,
                    backed: old.backed.min(start - m),
                },
            );
        }
        let old_end = m + old.len;
        if old_end > end {
            mappings.insert(
                end,
                Mapping {
                    len: old_end - end,
                    foffset: old.foffset + (end - m),
                    file: old.file,
                    writable: old.writable,
                    backed: (m + old.backed).saturating_sub(end).min(old_end - end),
                },
            );
        }
    }
}

/// The window as fuse-backend-rs's `PassthroughFs` drives it.
pub(super) struct DaxRequests(pub Arc<DaxWindow>);

impl DaxRequests {
    /// A SETUPMAPPING or REMOVEMAPPING whose own buffers lie in the window
    /// (so this thread pinned it) is refused. Judged here, on the call the
    /// server makes, not on the opcode the worker peeked: the guest may
    /// rewrite the request between the two reads.
    fn unpinned(&self) -> io::Result<()> {
        if PINNED.with(|p| p.get()) {
            log::debug!("virtio-fs: a DAX mapping change whose request lies in the window: EINVAL");
            return Err(io::Error::from_raw_os_error(libc::EINVAL));
        }
        Ok(())
    }
}

impl FsCacheReqHandler for DaxRequests {
    fn map(
        &mut self,
        foffset: u64,
        moffset: u64,
        len: u64,
        flags: u64,
        fd: RawFd,
    ) -> io::Result<()> {
        self.unpinned()?;
        self.0.map(foffset, moffset, len, flags, fd)
    }

    fn unmap(&mut self, requests: Vec<RemovemappingOne>) -> io::Result<()> {
        self.unpinned()?;
        self.0.unmap(&requests)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    const MIB: u64 = 1 << 20;
    const MAP_FLAG_READ: u64 = SetupmappingFlags::READ.bits();
    const MAP_FLAG_WRITE: u64 = SetupmappingFlags::WRITE.bits();
    const GPA: u64 = 1 << 32;

    fn temp_file(name: &str, bytes: &[u8]) -> (std::path::PathBuf, File) {
        let path = std::env::temp_dir().join(format!("ferry-dax-{}-{name}", std::process::id()));
        let mut f = File::options()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .unwrap();
        f.write_all(bytes).unwrap();
        (path, f)
    }

    fn byte_at(w: &DaxWindow, offset: u64) -> u8 {
        assert!(offset < w.size);
        // SAFETY: inside the window, which is always mapped.
        unsafe { std::ptr::read_volatile((w.base as u64 + offset) as *const u8) }
    }

    fn one(moffset: u64, len: u64) -> RemovemappingOne {
        RemovemappingOne { moffset, len }
    }

    #[test]
    fn sizes_must_be_powers_of_two_from_2_mib() {
        assert!(DaxWindow::new(0).is_err());
        assert!(DaxWindow::new(MIB).is_err());
        assert!(DaxWindow::new(3 * MIB).is_err());
        assert_eq!(DaxWindow::new(2 * MIB).unwrap().size(), 2 * MIB);
    }

    #[test]
    fn mapped_file_shows_through_and_unmap_removes_it() {
        let w = DaxWindow::new(4 * MIB).unwrap();
        let (path, f) = temp_file("show", &[7u8; 8192]);
        w.map(4096, 2 * MIB, 4096, MAP_FLAG_READ, f.as_raw_fd())
            .unwrap();
        assert_eq!(byte_at(&w, 2 * MIB), 7);
        assert_eq!(w.mapped_bytes(), 4096);
        // A host write is visible at once: the window is the page cache.
        std::fs::write(&path, [9u8; 8192]).unwrap();
        assert_eq!(byte_at(&w, 2 * MIB), 9);
        w.unmap(&[one(2 * MIB, 4096)]).unwrap();
        assert_eq!(w.mapped_bytes(), 0);
        // Inaccessible again: a fault there gets a zero page.
        w.set_guest_addr(Some(GPA));
        assert_eq!(w.handle_fault(Some(GPA + 2 * MIB + 10)), 4096);
        assert_eq!(byte_at(&w, 2 * MIB), 0);
        assert_eq!(w.handle_fault(Some(GPA - 1)), 0, "not the window's");
        let _ = std::fs::remove_file(path);
    }

    #[test]
    fn writable_mapping_writes_the_file() {
        let w = DaxWindow::new(2 * MIB).unwrap();
        let (path, f) = temp_file("write", &[0u8; 4096]);
        w.map(0, 0, 4096, MAP_FLAG_READ | MAP_FLAG_WRITE, f.as_raw_fd())
            .unwrap();
        // SAFETY: inside the window, mapped writable just above.
        unsafe { std::ptr::write_volatile(w.base as *mut u8, 0x5a) };
        w.clear().unwrap();
        assert_eq!(std::fs::read(&path).unwrap()[0], 0x5a);
        let _ = std::fs::remove_file(path);
    }

    #[test]
    fn bad_ranges_are_refused() {
        let w = DaxWindow::new(2 * MIB).unwrap();
        let (path, f) = temp_file("bad", &[1u8; 4096]);
        let fd = f.as_raw_fd();
        for (foffset, moffset, len) in [
            (0, 0, 0),                  // empty
            (0, 1, 4096),               // unaligned window offset
            (0, 0, 100),                // unaligned length
            (1, 0, 4096),               // unaligned file offset
            (0, 2 * MIB, 4096),         // past the end
            (0, 2 * MIB - 4096, 8192),  // straddles the end
            (0, u64::MAX - 4095, 4096), // wraps
            (u64::MAX - 4095, 0, 4096), // file offset beyond off_t
        ] {
            assert!(
                w.map(foffset, moffset, len, MAP_FLAG_READ, fd).is_err(),
                "map {foffset:#x} {moffset:#x} {len:#x} was accepted"
            );
        }
        assert!(w.unmap(&[one(4096, u64::MAX - 1)]).is_err());
        assert!(w.unmap(&[one(3 * MIB, 4096)]).is_err());
        // One bad range in a batch: nothing is removed.
        w.map(0, 0, 4096, MAP_FLAG_READ, fd).unwrap();
        assert!(w.unmap(&[one(0, 4096), one(1, 1)]).is_err());
        assert_eq!(byte_at(&w, 0), 1);
        // len = u64::MAX: to the end of the window.
        w.unmap(&[one(0, u64::MAX)]).unwrap();
        assert_eq!(w.mapped_bytes(), 0);
        let _ = std::fs::remove_file(path);
    }

    #[test]
    fn partial_unmap_keeps_the_rest() {
        let w = DaxWindow::new(2 * MIB).unwrap();
        let bytes: Vec<u8> = (0..4).flat_map(|i| [i as u8 + 1; 4096]).collect();
        let (path, f) = temp_file("partial", &bytes);
        w.map(0, 0, 4 * 4096, MAP_FLAG_READ, f.as_raw_fd()).unwrap();
        w.unmap(&[one(4096, 4096)]).unwrap();
        assert_eq!([0, 2, 3].map(|i| byte_at(&w, i * 4096)), [1, 3, 4]);
        assert_eq!(w.mapped_bytes(), 3 * 4096);
        w.set_guest_addr(Some(GPA));
        assert!(matches!(
            w.pin(w.shown(), [(GPA + 4096, 10, false)]),
            Err(PinError::Unmapped { .. })
        ));
        assert!(w
            .pin(w.shown(), [(GPA + 8192, 8192, false)])
            .unwrap()
            .is_some());
        let _ = std::fs::remove_file(path);
    }

    /// The host truncates the file between the pin's size check and the
    /// copy: the copy touches a page past EOF. Without the fault handler
    /// this test process dies of SIGBUS; with it the page reads as zeros,
    /// and once the file is back the window shows it again.
    #[test]
    fn truncation_during_a_copy_gives_zeros_not_sigbus() {
        let w = DaxWindow::new(2 * MIB).unwrap();
        let (path, f) = temp_file("copy-trunc", &[5u8; 2 * 4096]);
        w.map(
            0,
            0,
            2 * 4096,
            MAP_FLAG_READ | MAP_FLAG_WRITE,
            f.as_raw_fd(),
        )
        .unwrap();
        assert_eq!(byte_at(&w, 4096), 5);
        f.set_len(100).unwrap();
        // What a worker's memcpy would do, read and write.
        assert_eq!(byte_at(&w, 4096 + 7), 0);
        // SAFETY: inside the window; the handler backs the page.
        unsafe { std::ptr::write_volatile((w.base + 4096 + 8) as *mut u8, 1) };
        assert_eq!(
            byte_at(&w, 0),
            5,
            "the page before EOF still shows the file"
        );
        assert_eq!(
            std::fs::metadata(&path).unwrap().len(),
            100,
            "the file grew"
        );
        // The file grows back before the VMM's once-a-second repair: the
        // zero page must not stay in front of it.
        std::fs::write(&path, [6u8; 2 * 4096]).unwrap();
        w.restore_grown();
        assert_eq!(byte_at(&w, 4096 + 7), 6, "the zero page stayed");
        let _ = std::fs::remove_file(path);
    }

    /// A worker touches a window page that is not mapped (the guest
    /// rewrote a descriptor after the pin judged it): a zero page, not
    /// SIGSEGV.
    #[test]
    fn an_unmapped_window_page_gives_zeros_not_sigsegv() {
        let w = DaxWindow::new(2 * MIB).unwrap();
        assert_eq!(byte_at(&w, 3 * 4096 + 1), 0);
        // SAFETY: inside the window; the handler backs the page.
        unsafe { std::ptr::write_volatile((w.base + 5 * 4096) as *mut u8, 1) };
        assert_eq!(byte_at(&w, 5 * 4096), 1);
        assert_eq!(w.mapped_bytes(), 0);
    }

    #[test]
    fn host_truncation_is_repaired() {
        let w = DaxWindow::new(2 * MIB).unwrap();
        let (path, f) = temp_file("trunc", &[3u8; 4 * 4096]);
        w.map(0, 0, 4 * 4096, MAP_FLAG_READ, f.as_raw_fd()).unwrap();
        f.set_len(4096 + 10).unwrap();
        // Pages 2 and 3 now lie past EOF: touching them would SIGBUS.
        w.set_guest_addr(Some(GPA));
        assert!(matches!(
            w.pin(w.shown(), [(GPA + 2 * 4096, 4096, false)]),
            Err(PinError::PastEof { .. })
        ));
        assert_eq!(w.handle_fault(None), 2 * 4096);
        assert_eq!(byte_at(&w, 0), 3);
        assert_eq!(byte_at(&w, 2 * 4096), 0);
        assert_eq!(byte_at(&w, 3 * 4096 + 5), 0);
        assert_eq!(w.mapped_bytes(), 2 * 4096);
        assert_eq!(w.handle_fault(None), 0);
        // The file grows back (the guest truncated and re-extended it):
        // the file shows through again.
        assert_eq!(w.restore_grown(), 0);
        f.set_len(4 * 4096).unwrap();
        std::fs::write(&path, [8u8; 4 * 4096]).unwrap();
        assert_eq!(w.restore_grown(), 2 * 4096);
        assert_eq!(byte_at(&w, 3 * 4096), 8);
        assert_eq!(w.mapped_bytes(), 4 * 4096);
        let _ = std::fs::remove_file(path);
    }

    #[test]
    fn a_file_grown_while_being_parked_shows_through() {
        // The guest truncates and re-extends a file it has mapped while
        // the VMM's periodic check parks pages past the (old) end: once
        // the extending request has called `restore_grown`, the window
        // must show the file again, never a parked zero page.
        let w = Arc::new(DaxWindow::new(2 * MIB).unwrap());
        let (path, f) = temp_file("race", &[0u8; 4 * 4096]);
        w.map(0, 0, 4 * 4096, MAP_FLAG_READ, f.as_raw_fd()).unwrap();
        let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let checker = {
            let (w, done) = (w.clone(), done.clone());
            std::thread::spawn(move || {
                while !done.load(Ordering::Relaxed) {
                    w.repair_truncated();
                }
            })
        };
        let mut stale = 0;
        for i in 0..20_000u32 {
            let value = (i % 250) as u8 + 1;
            f.set_len(4096).unwrap();
            w.restore_grown();
            f.set_len(4 * 4096).unwrap();
            std::os::unix::fs::FileExt::write_all_at(&f, &[value], 3 * 4096).unwrap();
            w.restore_grown();
            if byte_at(&w, 3 * 4096) != value {
                stale += 1;
            }
        }
        done.store(true, Ordering::Relaxed);
        checker.join().unwrap();
        assert_eq!(stale, 0, "parked pages hid a grown file");
        let _ = std::fs::remove_file(path);
    }

    /// Anonymous memory (kB) of the mappings inside `[start, start + len)`.
    fn anonymous_kb(start: u64, len: u64) -> u64 {
        let smaps = std::fs::read_to_string("/proc/self/smaps").unwrap();
        let mut inside = false;
        let mut kb = 0;
        for line in smaps.lines() {
            if let Some((range, _)) = line.split_once(' ') {
                if let Some((a, b)) = range.split_once('-') {
                    if let (Ok(a), Ok(b)) = (u64::from_str_radix(a, 16), u64::from_str_radix(b, 16))
                    {
                        inside = a >= start && b <= start + len;
                        continue;
                    }
                }
            }
            if let Some(v) = line.strip_prefix("Anonymous:") {
                if inside {
                    kb += v
                        .trim()
                        .trim_end_matches(" kB")
                        .trim()
                        .parse::<u64>()
                        .unwrap();
                }
            }
        }
        kb
    }

    #[test]
    fn guest_writes_to_parked_pages_cost_no_memory_per_page() {
        // A mapped file truncated on the host: its pages are parked. A
        // guest writing to all of them took host memory for each (32 MiB
        // here, up to the window's size) beyond `--memory`.
        let size = 32 * MIB;
        let w = DaxWindow::new(64 * MIB).unwrap();
        let (path, f) = temp_file("parked-writes", &vec![7u8; size as usize]);
        w.map(0, 0, size, MAP_FLAG_READ | MAP_FLAG_WRITE, f.as_raw_fd())
            .unwrap();
        f.set_len(0).unwrap();
        assert_eq!(w.repair_truncated(), size);
        for at in (0..size).step_by(4096) {
            // SAFETY: inside the window, parked (writable) just above.
            unsafe { std::ptr::write_volatile((w.base as u64 + at) as *mut u8, 1) };
        }
        assert_eq!(
            anonymous_kb(w.base as u64, w.size),
            0,
            "anonymous pages in the window"
        );
        let scratch = w.scratch.file.metadata().unwrap();
        assert!(
            std::os::unix::fs::MetadataExt::blocks(&scratch) * 512 <= SCRATCH_LEN,
            "scratch grew past 2 MiB"
        );
        // Parking more zeros them again.
        f.set_len(2 * 4096).unwrap();
        w.restore_grown();
        f.set_len(4096).unwrap();
        assert_eq!(w.repair_truncated(), 4096);
        assert_eq!(byte_at(&w, 3 * 4096), 0);
        assert_eq!(
            byte_at(&w, 0),
            0,
            "the file's own byte (zero after regrowth)"
        );
        let _ = std::fs::remove_file(path);
    }

    #[test]
    fn the_control_loop_never_waits_for_a_pinned_request() {
        // A worker holds a pin for as long as its request runs, and a
        // mapping change queues behind it. The VMM's periodic repair
        // queued too, and while it waited SIGTERM and `--timeout` did
        // nothing: it must give up at once and try on a later tick.
        let w = Arc::new(DaxWindow::new(2 * MIB).unwrap());
        let (path, f) = temp_file("pinned", &[1u8; 2 * 4096]);
        w.map(0, 0, 2 * 4096, MAP_FLAG_READ, f.as_raw_fd()).unwrap();
        w.set_guest_addr(Some(GPA));
        let pin = w.pin(w.shown(), [(GPA, 4096, false)]).unwrap();
        assert!(pin.is_some());
        let change = {
            let w = w.clone();
            std::thread::spawn(move || w.unmap(&[one(0, 2 * 4096)]))
        };
        // Let the mapping change queue behind the pin.
        std::thread::sleep(std::time::Duration::from_millis(200));
        let (tx, rx) = std::sync::mpsc::channel();
        {
            let w = w.clone();
            std::thread::spawn(move || {
                let _ = tx.send(w.repair_if_free());
            });
        }
        let repaired = rx
            .recv_timeout(std::time::Duration::from_secs(5))
            .expect("the repair waited for a pinned request");
        assert_eq!(repaired, None, "a busy window is left for the next tick");
        drop(pin);
        change.join().unwrap().unwrap();
        assert_eq!(w.repair_if_free(), Some(0));
        let _ = std::fs::remove_file(path);
    }

    #[test]
    fn pins_check_mapping_and_access() {
        let w = DaxWindow::new(2 * MIB).unwrap();
        let (path, f) = temp_file("pin", &[5u8; 4 * 4096]);
        w.map(0, 0, 2 * 4096, MAP_FLAG_READ, f.as_raw_fd()).unwrap();
        w.map(
            8192,
            8192,
            2 * 4096,
            MAP_FLAG_READ | MAP_FLAG_WRITE,
            f.as_raw_fd(),
        )
        .unwrap();
        // Not shown to the guest yet, or a buffer elsewhere: no pin needed.
        assert!(w.pin(w.shown(), [(GPA, 4096, false)]).unwrap().is_none());
        w.set_guest_addr(Some(GPA));
        assert!(w
            .pin(w.shown(), [(GPA - 4096, 4096, true)])
            .unwrap()
            .is_none());
        // Reads across both mappings are fine; writes only to the second.
        assert!(w
            .pin(w.shown(), [(GPA + 100, 4 * 4096 - 100, false)])
            .unwrap()
            .is_some());
        assert!(w
            .pin(w.shown(), [(GPA + 8192, 8192, true)])
            .unwrap()
            .is_some());
        assert!(matches!(
            w.pin(w.shown(), [(GPA + 8192, 8192, true), (GPA, 1, true)]),
            Err(PinError::ReadOnly { .. })
        ));
        // Straddling the end of the mapped part.
        assert!(matches!(
            w.pin(w.shown(), [(GPA + 3 * 4096, 8192, false)]),
            Err(PinError::Unmapped { .. })
        ));
        let _ = std::fs::remove_file(path);
    }
}
