//! Pins: a queue worker copies to or from window pages only while it
//! holds one, which keeps every mapping it judged in place.

use std::sync::RwLockReadGuard;

use super::mapping::Mappings;
use super::DaxWindow;

/// Held while a worker copies to or from window pages: no mapping changes
/// meanwhile.
pub struct DaxPin<'a>(#[allow(dead_code)] RwLockReadGuard<'a, Mappings>);

thread_local! {
    /// This thread holds a pin: a mapping change it asked for would wait
    /// for its own read lock, forever.
    pub(super) static PINNED: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
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

impl DaxWindow {
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
}
