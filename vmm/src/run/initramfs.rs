//! A distribution kernel under `ferry run`: such kernels have virtio-pci,
//! virtio-fs and FUSE as modules, so before the root share can be mounted
//! the guest needs them loaded. Ferry writes a small initramfs on the fly:
//! itself as `/init` (with its ELF interpreter and libraries), the modules
//! and their dependencies from `/lib/modules/RELEASE` in load order, and a
//! manifest. Its `/init` loads them, mounts the root share and carries on
//! from there as the usual guest init (`guest_init::stage_one`).

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

/// The manifest in the initramfs: one `module PATH` line per module in
/// load order, then `exec PATH` (Ferry's host path, run from the root
/// share once it is mounted).
pub const MANIFEST: &str = "/ferry-stage1";

/// What the root share needs, and what overlays need.
const REQUIRED: [&str; 2] = ["virtio_pci", "virtiofs"];
const FOR_OVERLAYS: &str = "overlay";

#[derive(Debug, thiserror::Error)]
pub enum InitramfsError {
    #[error("{}: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "the kernel needs module {name}, which {} does not have (is it the modules of \
         another kernel?)",
        dir.display()
    )]
    MissingModule { name: String, dir: PathBuf },
    #[error(
        "{}: compressed modules (.ko.xz, .ko.zst, .ko.gz) are not supported yet; \
         decompress them into a directory and pass --kernel with a matching --modules",
        .0.display()
    )]
    Compressed(PathBuf),
    #[error("writing the initramfs {}: {source}", path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// The modules directory of a kernel `release` that needs modules for
/// Ferry's devices, or None (the project kernel, or any kernel with them
/// built in or without a modules directory here).
pub fn modules_needed(release: &str) -> Option<PathBuf> {
    let dir = ["/lib/modules", "/usr/lib/modules"]
        .iter()
        .map(|base| Path::new(base).join(release))
        .find(|d| d.join("modules.dep").is_file())?;
    let builtin = builtin_names(&dir);
    REQUIRED
        .iter()
        .any(|m| !builtin.contains(*m))
        .then_some(dir)
}

fn module_name(path: &str) -> String {
    let file = path.rsplit('/').next().unwrap_or(path);
    let stem = file.split(".ko").next().unwrap_or(file);
    stem.replace('-', "_")
}

fn builtin_names(dir: &Path) -> BTreeSet<String> {
    std::fs::read_to_string(dir.join("modules.builtin"))
        .unwrap_or_default()
        .lines()
        .map(module_name)
        .collect()
}

/// `modules.dep`: module name -> (path relative to the directory, the
/// paths it depends on).
fn read_deps(dir: &Path) -> Result<BTreeMap<String, (String, Vec<String>)>, InitramfsError> {
    let path = dir.join("modules.dep");
    let text = std::fs::read_to_string(&path).map_err(|source| InitramfsError::Read {
        path: path.clone(),
        source,
    })?;
    Ok(text
        .lines()
        .filter_map(|line| {
            let (module, deps) = line.split_once(':')?;
            let deps = deps.split_whitespace().map(String::from).collect();
            Some((module_name(module), (module.to_string(), deps)))
        })
        .collect())
}

/// The module files to load, dependencies first: the closure of `wanted`
/// (less what is built in), each once.
pub fn load_order(dir: &Path, wanted: &[&str]) -> Result<Vec<PathBuf>, InitramfsError> {
    let deps = read_deps(dir)?;
    let builtin = builtin_names(dir);
    let mut order: Vec<String> = Vec::new();
    for name in wanted {
        if builtin.contains(*name) {
            continue;
        }
        let (path, needs) = deps
            .get(*name)
            .ok_or_else(|| InitramfsError::MissingModule {
                name: (*name).to_string(),
                dir: dir.to_path_buf(),
            })?;
        // modules.dep lists the whole closure, in an order where each
        // module comes after what it needs when read backwards.
        for p in needs.iter().rev().chain(std::iter::once(path)) {
            if !order.contains(p) {
                order.push(p.clone());
            }
        }
    }
    order
        .into_iter()
        .map(|p| {
            let full = dir.join(&p);
            if p.ends_with(".ko") {
                Ok(full)
            } else {
                Err(InitramfsError::Compressed(full))
            }
        })
        .collect()
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

/// Writes the initramfs for a kernel whose modules are in `dir` to `out`:
/// Ferry (`exe`) as /init, its runtime, the modules (`overlays`: also
/// overlayfs) and the manifest.
pub fn write(out: &Path, exe: &Path, dir: &Path, overlays: bool) -> Result<(), InitramfsError> {
    let mut wanted: Vec<&str> = REQUIRED.to_vec();
    if overlays {
        wanted.push(FOR_OVERLAYS);
    }
    let modules = load_order(dir, &wanted)?;
    let read = |p: &Path| {
        std::fs::read(p).map_err(|source| InitramfsError::Read {
            path: p.to_path_buf(),
            source,
        })
    };
    let mut manifest = String::new();
    let mut blobs: Vec<(String, Vec<u8>)> = Vec::new();
    for (i, m) in modules.iter().enumerate() {
        let name = format!("/modules/{i}.ko");
        manifest.push_str(&format!("module {name}\n"));
        blobs.push((name, read(m)?));
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
        cpio.file("/init", 0o755, &std::fs::read(exe)?)?;
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
        for (name, data) in &blobs {
            cpio.file(name, 0o644, data)?;
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

    fn fake_modules() -> PathBuf {
        let dir = std::env::temp_dir().join(format!("ferry-mods-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("kernel/fs/fuse")).unwrap();
        std::fs::write(
            dir.join("modules.dep"),
            "kernel/fs/fuse/fuse.ko:\n\
             kernel/fs/fuse/virtiofs.ko: kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko kernel/fs/fuse/fuse.ko\n\
             kernel/drivers/virtio/virtio_pci.ko: kernel/drivers/virtio/virtio_pci_legacy_dev.ko kernel/drivers/virtio/virtio_pci_modern_dev.ko kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko\n\
             kernel/drivers/virtio/virtio_ring.ko:\n\
             kernel/drivers/virtio/virtio.ko:\n\
             kernel/drivers/virtio/virtio_pci_modern_dev.ko:\n\
             kernel/drivers/virtio/virtio_pci_legacy_dev.ko:\n\
             kernel/fs/overlayfs/overlay.ko.xz:\n",
        )
        .unwrap();
        std::fs::write(
            dir.join("modules.builtin"),
            "kernel/fs/configfs/configfs.ko\n",
        )
        .unwrap();
        dir
    }

    #[test]
    fn the_closure_loads_dependencies_first_and_once() {
        let dir = fake_modules();
        let order: Vec<String> = load_order(&dir, &["virtio_pci", "virtiofs", "configfs"])
            .unwrap()
            .iter()
            .map(|p| module_name(&p.to_string_lossy()))
            .collect();
        assert_eq!(
            order,
            [
                "virtio_ring",
                "virtio",
                "virtio_pci_modern_dev",
                "virtio_pci_legacy_dev",
                "virtio_pci",
                "fuse",
                "virtiofs"
            ]
        );
        assert!(matches!(
            load_order(&dir, &["nope"]),
            Err(InitramfsError::MissingModule { .. })
        ));
        assert!(matches!(
            load_order(&dir, &["overlay"]),
            Err(InitramfsError::Compressed(_))
        ));
        let _ = std::fs::remove_dir_all(dir);
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
