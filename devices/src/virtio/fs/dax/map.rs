//! SETUPMAPPING and REMOVEMAPPING: which file pages go into the window and
//! come out (the system calls themselves are `mmap.rs`'s).

use std::fs::File;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, RawFd};
use std::sync::Arc;

use fuse_backend_rs::abi::virtio_fs::{RemovemappingOne, SetupmappingFlags};

use super::mapping::{carve, Mapping};
use super::{einval, DaxWindow};

impl DaxWindow {
    /// Checks that `[moffset, moffset + len)` is a non-empty, page-aligned
    /// range inside the window.
    pub(super) fn check_range(&self, moffset: u64, len: u64) -> io::Result<()> {
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

    /// Maps `len` bytes of `m`'s file, `skip` bytes into the mapping at
    /// window offset `moffset`, writable if `m` is.
    pub(super) fn map_file(
        &self,
        m: &Mapping,
        moffset: u64,
        skip: u64,
        len: u64,
    ) -> io::Result<()> {
        self.reservation.map_file(
            moffset + skip,
            len,
            m.file.as_fd(),
            m.foffset + skip,
            m.writable,
        )
    }

    /// Makes `[moffset, moffset + len)` inaccessible again.
    pub(super) fn reserve(&self, moffset: u64, len: u64) -> io::Result<()> {
        self.reservation.clear(moffset, len)
    }

    /// Puts zero pages the guest may read and write at the range: the
    /// scratch file's, so they cost no memory per page (see `Scratch`).
    pub(super) fn fill_scratch(&self, moffset: u64, len: u64) -> io::Result<()> {
        self.scratch.fill(&self.reservation, moffset, len)
    }
}
