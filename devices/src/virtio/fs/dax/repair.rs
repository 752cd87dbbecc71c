//! Repair: pages past the end of a truncated file are parked on zero
//! pages and get the file back when it grows; an unmapped page the guest
//! faulted on gets a zero page. The vCPUs and the control loop reach this
//! through `GuestMemoryFault`.

use std::collections::HashMap;
use std::fs::File;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use crate::vm_ops::GuestMemoryFault;

use super::mapping::{carve, Mappings};
use super::{DaxWindow, Wait};

impl DaxWindow {
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
    pub(super) fn faults_flagged(&self) -> bool {
        self.faults.as_ref().is_some_and(|g| g.repaired())
    }

    pub(super) fn faults_repaired(&self, wait: Wait) -> bool {
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
    pub(super) fn rebalance(&self, park: bool, wait: Wait) -> Option<u64> {
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

    pub(super) fn recount(&self, mappings: &Mappings) {
        let parked = mappings.values().filter(|m| m.backed < m.len).count();
        self.parked.store(parked, Ordering::SeqCst);
    }

    /// Mappings to park (file-backed past their file's end) or to restore
    /// (parked pages their file covers again): (window offset, bytes the
    /// file covers now).
    pub(super) fn out_of_step(&self, mappings: &Mappings, park: bool) -> Vec<(u64, u64)> {
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
}

/// The window's side of a guest memory fault: the vCPUs and the control
/// loop reach it through this, knowing nothing of DAX.
impl GuestMemoryFault for DaxWindow {
    fn on_fault(&self, gpa: Option<u64>) -> u64 {
        let repaired = self.handle_fault(gpa);
        if repaired > 0 {
            let at = gpa.map(|g| format!(" at {g:#x}")).unwrap_or_default();
            log::warn!(
                "guest access{at} to a DAX window page the host cannot back (past the end of a \
                 truncated file, or an unmapped range); {} KiB now read as zeros",
                repaired >> 10
            );
        }
        repaired
    }

    /// Never waits: a window a request holds is repaired on a later tick.
    fn on_tick(&self) {
        let repaired = self.repair_if_free().unwrap_or(0);
        if repaired > 0 {
            // Routine when the guest truncates files it has mapped, so
            // not a warning.
            log::info!(
                "a file mapped into a DAX window shrank (truncated by the guest or on the \
                 host); {} KiB past its new end read as zeros until it grows again",
                repaired >> 10
            );
        }
    }
}
