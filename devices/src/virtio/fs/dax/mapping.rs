//! What is mapped where in the window: pure bookkeeping, no system call.

use std::collections::BTreeMap;
use std::fs::File;
use std::sync::Arc;

/// One file range mapped into the window, kept so a host truncation can be
/// repaired and so the mapping's file stays open for `fstat`.
pub(super) struct Mapping {
    pub(super) len: u64,
    pub(super) file: Arc<File>,
    pub(super) foffset: u64,
    pub(super) writable: bool,
    /// The first `backed` bytes map the file; the rest is parked on zero
    /// pages because the file was truncated (see `repair_truncated`).
    pub(super) backed: u64,
}

pub(super) type Mappings = BTreeMap<u64, Mapping>;

/// Removes `[start, start + len)` from the tracked mappings, keeping the
/// parts of partly covered mappings on either side.
pub(super) fn carve(mappings: &mut BTreeMap<u64, Mapping>, start: u64, len: u64) {
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

#[cfg(test)]
mod tests {
    use super::*;

    const PAGE: u64 = 4096;
    const PAGES: u64 = 64;
    const PAGE_STEP: usize = 4096;

    fn index(page: u64) -> usize {
        usize::try_from(page).unwrap()
    }

    /// What one window page shows: (file offset, writable, backed).
    type Page = Option<(u64, bool, bool)>;

    /// xorshift64: a seeded, repeatable sequence (no extra crate).
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
        fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }
    }

    fn pages_of(mappings: &Mappings) -> Vec<Page> {
        let mut pages = vec![None; index(PAGES)];
        let mut last_end = 0;
        for (&start, m) in mappings {
            assert!(start >= last_end, "mappings overlap at {start:#x}");
            assert!(m.len > 0 && m.len % PAGE == 0 && start % PAGE == 0);
            assert!(m.backed <= m.len, "backed past the mapping's end");
            last_end = start + m.len;
            for at in (start..start + m.len).step_by(PAGE_STEP) {
                let backed = at < start + m.backed;
                pages[index(at / PAGE)] = Some((m.foffset + (at - start), m.writable, backed));
            }
        }
        assert!(last_end <= PAGES * PAGE);
        pages
    }

    /// Random maps (carve, then insert, as SETUPMAPPING does), unmaps
    /// (carve) and truncations (a shorter `backed`) against a page-by-page
    /// model: no overlap ever, and every page keeps its file offset, its
    /// access and whether it is backed.
    #[test]
    fn carving_matches_a_page_model() {
        let file = Arc::new(File::open("/dev/null").unwrap());
        for seed in 1..=20u64 {
            let mut rng = Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15));
            let mut mappings = Mappings::new();
            let mut model: Vec<Page> = vec![None; index(PAGES)];
            for _ in 0..500 {
                let first = rng.below(PAGES);
                let count = 1 + rng.below(PAGES - first);
                let (start, len) = (first * PAGE, count * PAGE);
                match rng.below(3) {
                    0 => {
                        let foffset = rng.below(1 << 20) * PAGE;
                        let writable = rng.below(2) == 0;
                        let backed = rng.below(count + 1) * PAGE;
                        carve(&mut mappings, start, len);
                        mappings.insert(
                            start,
                            Mapping {
                                len,
                                file: file.clone(),
                                foffset,
                                writable,
                                backed,
                            },
                        );
                        for i in 0..count {
                            model[index(first + i)] =
                                Some((foffset + i * PAGE, writable, i * PAGE < backed));
                        }
                    }
                    1 => {
                        carve(&mut mappings, start, len);
                        for i in 0..count {
                            model[index(first + i)] = None;
                        }
                    }
                    _ => {
                        // The file shrank under the mapping at `start`, if any.
                        if let Some(m) = mappings.get_mut(&start) {
                            let keep = rng.below(m.len / PAGE + 1) * PAGE;
                            m.backed = m.backed.min(keep);
                            for at in (start + m.backed..start + m.len).step_by(PAGE_STEP) {
                                if let Some(p) = model[index(at / PAGE)].as_mut() {
                                    p.2 = false;
                                }
                            }
                        }
                    }
                }
                assert_eq!(pages_of(&mappings), model, "seed {seed}");
            }
        }
    }
}
