use std::fs::File;
use std::io::Write;
use std::os::fd::AsRawFd;
use std::sync::Arc;

use fuse_backend_rs::abi::virtio_fs::{RemovemappingOne, SetupmappingFlags};

use super::mmap::SCRATCH_LEN;
use super::*;

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
    let bytes: Vec<u8> = (1..=4u8).flat_map(|i| [i; 4096]).collect();
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
                if let (Ok(a), Ok(b)) = (u64::from_str_radix(a, 16), u64::from_str_radix(b, 16)) {
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
    let (path, f) = temp_file("parked-writes", &vec![7u8; usize::try_from(size).unwrap()]);
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
