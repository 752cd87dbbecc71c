//! A distribution kernel under `ferry run`: such kernels have virtio-pci,
//! virtio-fs and FUSE as modules, so before the root share can be mounted
//! the guest needs them loaded. Ferry writes a small initramfs on the fly:
//! itself as `/init` (with its ELF interpreter and libraries), the modules
//! and their dependencies from `/lib/modules/RELEASE` in load order, and a
//! manifest. Its `/init` loads them, mounts the root share and carries on
//! from there as the usual guest init (`guest_init::stage_one`).

use std::collections::BTreeSet;
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use std::io::{Read, Seek};

use object::elf::FileHeader64;
use object::read::elf::{FileHeader, ProgramHeader};
use object::Endianness;

use super::modules::{ModuleTree, ModulesError};

/// The manifest in the initramfs: one `module PATH` line per module in
/// load order, then `exec PATH` (Ferry's host path, run from the root
/// share once it is mounted).
pub const MANIFEST: &str = "/ferry-stage1";

#[derive(Debug, thiserror::Error)]
pub enum InitramfsError {
    #[error(transparent)]
    Modules(#[from] ModulesError),
    #[error("writing the initramfs {}: {source}", path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// A newc ("070701") cpio archive, as the kernel unpacks initramfs.
struct Cpio<W: Write> {
    out: W,
    ino: u32,
    written: u64,
}

impl<W: Write> Cpio<W> {
    fn new(out: W) -> Self {
        Cpio {
            out,
            ino: 1,
            written: 0,
        }
    }

    fn entry(
        &mut self,
        name: &str,
        mode: u32,
        rdev: (u32, u32),
        data: &[u8],
    ) -> std::io::Result<()> {
        let name = name.trim_start_matches('/');
        let name = if name.is_empty() { "." } else { name };
        let size = u32::try_from(data.len())
            .map_err(|_| std::io::Error::other(format!("{name}: over 4 GiB")))?;
        let namesize =
            u32::try_from(name.len() + 1).map_err(|_| std::io::Error::other("name too long"))?;
        let header = format!(
            "070701{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}",
            self.ino, mode, 0, 0, 1, 0, size, 0, 0, rdev.0, rdev.1, namesize, 0
        );
        self.ino += 1;
        self.put(header.as_bytes())?;
        self.put(name.as_bytes())?;
        self.put(&[0])?;
        self.pad()?;
        self.put(data)?;
        self.pad()
    }

    fn put(&mut self, b: &[u8]) -> std::io::Result<()> {
        self.out.write_all(b)?;
        self.written += b.len() as u64;
        Ok(())
    }

    fn pad(&mut self) -> std::io::Result<()> {
        let n = usize::try_from((4 - self.written % 4) % 4).unwrap_or(0);
        self.put(&[0u8; 3][..n])
    }

    fn dir(&mut self, name: &str) -> std::io::Result<()> {
        self.entry(name, libc::S_IFDIR | 0o755, (0, 0), &[])
    }

    fn file(&mut self, name: &str, mode: u32, data: &[u8]) -> std::io::Result<()> {
        self.entry(name, libc::S_IFREG | mode, (0, 0), data)
    }

    fn symlink(&mut self, name: &str, target: &[u8]) -> std::io::Result<()> {
        self.entry(name, libc::S_IFLNK | 0o777, (0, 0), target)
    }

    fn finish(mut self) -> std::io::Result<W> {
        self.entry("TRAILER!!!", 0, (0, 0), &[])?;
        Ok(self.out)
    }
}

/// Every directory above `path` (absolute), outermost first.
fn parents(path: &Path) -> Vec<String> {
    let mut out: Vec<String> = path
        .ancestors()
        .skip(1)
        .filter(|p| p.as_os_str().len() > 1)
        .map(|p| p.to_string_lossy().into_owned())
        .collect();
    out.reverse();
    out
}

/// The shared objects this process runs with (its ELF interpreter and
/// libraries), as `/proc/self/maps` names them, and the interpreter path
/// the binary asks for when that is a symlink (`/lib64/ld-linux...`).
fn runtime_files() -> Vec<PathBuf> {
    let maps = std::fs::read_to_string("/proc/self/maps").unwrap_or_default();
    let mut files: BTreeSet<PathBuf> = maps
        .lines()
        .filter_map(|l| l.split_whitespace().nth(5))
        .filter(|p| p.starts_with('/') && p.contains(".so"))
        .map(PathBuf::from)
        .collect();
    files.insert(PathBuf::from("/lib64/ld-linux-x86-64.so.2"));
    files.into_iter().collect()
}

/// Ferry's binary as the initramfs's `/init` runs only the first stage,
/// which never needs its symbols or debug information: the file up to the
/// end of its last segment, with the section table dropped (a debug build
/// goes from about 59 MB to 3.4). Only that part is read: the ELF and
/// program headers first, then up to their end. Anything that does not
/// parse as ELF64 goes in whole.
fn read_loadable(exe: &Path) -> std::io::Result<Vec<u8>> {
    let mut file = std::fs::File::open(exe)?;
    let mut head = Vec::new();
    (&mut file).take(HEADERS_READ).read_to_end(&mut head)?;
    let Some(end) = loadable_end(&head) else {
        file.read_to_end(&mut head)?;
        return Ok(head);
    };
    let more = end.saturating_sub(head.len() as u64);
    (&mut file).take(more).read_to_end(&mut head)?;
    head.truncate(usize::try_from(end).unwrap_or(usize::MAX));
    if head.len() as u64 != end {
        // Shorter than its own headers say: not an ELF file to cut.
        file.rewind()?;
        head.clear();
        file.read_to_end(&mut head)?;
        return Ok(head);
    }
    // e_shoff (8 bytes at 0x28), e_shnum and e_shstrndx (2 each at 0x3c).
    head[0x28..0x30].fill(0);
    head[0x3c..0x40].fill(0);
    Ok(head)
}

/// Where the last segment of the ELF64 file starting with `head` ends, if
/// `head` holds its header and program headers.
fn loadable_end(head: &[u8]) -> Option<u64> {
    let header = FileHeader64::<Endianness>::parse(head).ok()?;
    let endian = header.endian().ok()?;
    let end = header
        .program_headers(endian, head)
        .ok()?
        .iter()
        .map(|ph| ph.p_offset(endian).saturating_add(ph.p_filesz(endian)))
        .max()?;
    (end >= ELF64_HEADER).then_some(end)
}

const ELF64_HEADER: u64 = 0x40;
/// Enough for the ELF header and any real program header table.
const HEADERS_READ: u64 = 64 << 10;

/// Writes to `out` the initramfs for a kernel of `release` whose modules
/// are in `modules`: Ferry (`exe`) as /init, its runtime, the `wanted`
/// modules with their dependencies, and the manifest.
pub fn write(
    out: &Path,
    exe: &Path,
    modules: &ModuleTree,
    release: &str,
    wanted: &[&str],
) -> Result<(), InitramfsError> {
    let modules = modules.load_order(wanted, release)?;
    let mut manifest = String::new();
    for (i, m) in modules.iter().enumerate() {
        manifest.push_str(&format!("module /modules/{i}-{}.ko\n", m.name));
    }
    manifest.push_str(&format!("exec {}\n", exe.display()));
    let file = std::fs::File::create(out).map_err(|source| InitramfsError::Write {
        path: out.to_path_buf(),
        source,
    })?;
    let written = (|| -> std::io::Result<()> {
        let mut cpio = Cpio::new(std::io::BufWriter::new(file));
        let mut dirs: BTreeSet<String> = ["/", "/dev", "/proc", "/sys", "/newroot", "/modules"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let runtime = runtime_files();
        for f in &runtime {
            dirs.extend(parents(f));
        }
        for d in &dirs {
            cpio.dir(d)?;
        }
        cpio.entry("/dev/console", libc::S_IFCHR | 0o600, (5, 1), &[])?;
        cpio.file("/init", 0o755, &read_loadable(exe)?)?;
        for f in &runtime {
            let name = f.to_string_lossy();
            match std::fs::read_link(f) {
                Ok(_) => {
                    // Straight to the file: the link's own target may go
                    // through links the archive does not have (/lib ->
                    // usr/lib on a merged-/usr host).
                    let resolved = std::fs::canonicalize(f)?;
                    cpio.symlink(&name, resolved.as_os_str().as_bytes())?;
                    // The target too, if it is not one of the mapped files.
                    if !runtime.contains(&resolved) {
                        for d in parents(&resolved) {
                            if dirs.insert(d.clone()) {
                                cpio.dir(&d)?;
                            }
                        }
                        cpio.file(
                            &resolved.to_string_lossy(),
                            0o755,
                            &std::fs::read(&resolved)?,
                        )?;
                    }
                }
                Err(_) => cpio.file(&name, 0o755, &std::fs::read(f)?)?,
            }
        }
        for (i, m) in modules.iter().enumerate() {
            cpio.file(&format!("/modules/{i}-{}.ko", m.name), 0o644, &m.image)?;
        }
        cpio.file(MANIFEST, 0o644, manifest.as_bytes())?;
        cpio.finish()?.flush()
    })();
    written.map_err(|source| InitramfsError::Write {
        path: out.to_path_buf(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn init_is_ferry_without_what_only_debuggers_read() {
        use object::read::elf::ElfFile64;
        let exe_path = std::env::current_exe().unwrap();
        let exe = std::fs::read(&exe_path).unwrap();
        let cut = read_loadable(&exe_path).unwrap();
        assert!(cut.len() < exe.len(), "{} -> {}", exe.len(), cut.len());
        assert_eq!(cut[0x40..], exe[0x40..cut.len()], "a prefix of the file");
        let elf = ElfFile64::<Endianness>::parse(&cut[..]).expect("still ELF");
        let whole = ElfFile64::<Endianness>::parse(&exe[..]).unwrap();
        assert_eq!(
            elf.elf_program_headers().len(),
            whole.elf_program_headers().len()
        );
        // What is not ELF goes in whole.
        let script = std::env::temp_dir().join(format!("ferry-init-{}", std::process::id()));
        std::fs::write(&script, b"#!/bin/sh\n").unwrap();
        assert_eq!(read_loadable(&script).unwrap(), b"#!/bin/sh\n");
        let _ = std::fs::remove_file(script);
    }

    #[test]
    fn the_archive_lists_with_cpio() {
        let out = std::env::temp_dir().join(format!("ferry-cpio-{}.cpio", std::process::id()));
        let file = std::fs::File::create(&out).unwrap();
        let mut c = Cpio::new(file);
        c.dir("/").unwrap();
        c.dir("/etc").unwrap();
        c.file("/etc/hello", 0o644, b"hello\n").unwrap();
        c.symlink("/link", b"etc/hello").unwrap();
        c.finish().unwrap();
        let listed = std::process::Command::new("cpio")
            .args(["-it", "--quiet", "-F"])
            .arg(&out)
            .output();
        // cpio(1) is in the project's dependencies (install-deps.sh).
        let listed = listed.expect("cpio(1) to list the archive");
        assert_eq!(
            String::from_utf8_lossy(&listed.stdout),
            ".\netc\netc/hello\nlink\n"
        );
        let _ = std::fs::remove_file(out);
    }
}
