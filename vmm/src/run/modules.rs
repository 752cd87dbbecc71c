//! A kernel's loadable modules, as `ferry run` needs them for a
//! distribution kernel or a kernel build tree: which of Ferry's modules the
//! kernel lacks built in, each module's file (decompressed: `.ko.xz`,
//! `.ko.zst` and `.ko.gz` as distributions ship them), its dependencies and
//! the kernel it was built for, all read from the module's own `.modinfo`,
//! so an installed tree (`/lib/modules/RELEASE`) and a build tree (`--modules
//! DIR`, with no `modules.dep`) are read the same way.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use object::{Object, ObjectSection};

use super::spec::RunSpec;

/// What the root share needs.
pub const REQUIRED: [&str; 2] = ["virtio_pci", "virtiofs"];
/// What overlays need besides.
pub const FOR_OVERLAYS: &str = "overlay";
/// What `--net` needs besides.
pub const FOR_NETWORK: &str = "virtio_net";

/// The modules a run of `spec` needs: the root share's, then overlayfs for
/// overlays and virtio_net for a network.
pub fn wanted(spec: &RunSpec) -> Vec<&'static str> {
    let mut wanted = REQUIRED.to_vec();
    if !spec.overlays.is_empty() {
        wanted.push(FOR_OVERLAYS);
    }
    if spec.network {
        wanted.push(FOR_NETWORK);
    }
    wanted
}

/// The largest module file read, and the largest it may decompress to:
/// the biggest in-tree modules are a few MiB; past this a file is not one.
const MODULE_LIMIT: u64 = 64 << 20;
/// A build tree holds tens of thousands of files; past this depth the walk
/// is in something that is not one.
const WALK_DEPTH: usize = 12;

#[derive(Debug, thiserror::Error)]
pub enum ModulesError {
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
    Missing { name: String, dir: PathBuf },
    #[error("{}: not a kernel module: {why}", path.display())]
    NotAModule { path: PathBuf, why: String },
    #[error(
        "modules for another kernel: {} was built for {vermagic}, the kernel is {release} \
         (pass the kernel's own --modules)",
        path.display()
    )]
    ForAnotherKernel {
        path: PathBuf,
        vermagic: String,
        release: String,
    },
    #[error("{}: no modules here (no modules.dep and no .ko files)", .0.display())]
    NoModules(PathBuf),
}

/// One module, ready to load: its decompressed image and what `.modinfo`
/// says of it.
#[derive(Debug)]
pub struct Module {
    pub name: String,
    pub image: Vec<u8>,
    /// The first word of `vermagic=`: the release it was built for.
    pub built_for: String,
    pub depends: Vec<String>,
}

/// A directory of modules: each module's file by name, and the names built
/// into the kernel (`modules.builtin`).
#[derive(Debug)]
pub struct ModuleTree {
    dir: PathBuf,
    files: BTreeMap<String, PathBuf>,
    builtin: BTreeSet<String>,
}

/// The installed modules of `release`, if this host has them.
pub fn installed(release: &str) -> Option<PathBuf> {
    ["/lib/modules", "/usr/lib/modules"]
        .iter()
        .map(|base| Path::new(base).join(release))
        .find(|d| d.join("modules.dep").is_file())
}

/// `virtio_pci` from `kernel/drivers/virtio/virtio_pci.ko.xz` (or from
/// `virtio-pci`): names as the kernel spells them.
fn module_name(path: &str) -> String {
    let file = path.rsplit('/').next().unwrap_or(path);
    let stem = file.split(".ko").next().unwrap_or(file);
    stem.replace('-', "_")
}

fn is_module_file(name: &str) -> bool {
    [".ko", ".ko.xz", ".ko.zst", ".ko.gz"]
        .iter()
        .any(|ext| name.ends_with(ext))
}

impl ModuleTree {
    /// Reads `dir`: an installed tree through its `modules.dep`, anything
    /// else (a kernel build tree) by finding its module files.
    pub fn open(dir: &Path) -> Result<Self, ModulesError> {
        let dep = dir.join("modules.dep");
        let files = if dep.is_file() {
            let text = std::fs::read_to_string(&dep).map_err(|source| ModulesError::Read {
                path: dep.clone(),
                source,
            })?;
            text.lines()
                .filter_map(|line| line.split_once(':'))
                .map(|(file, _)| (module_name(file), dir.join(file)))
                .collect()
        } else {
            let mut files = BTreeMap::new();
            walk(dir, 0, &mut files).map_err(|source| ModulesError::Read {
                path: dir.to_path_buf(),
                source,
            })?;
            if files.is_empty() {
                return Err(ModulesError::NoModules(dir.to_path_buf()));
            }
            files
        };
        let builtin = std::fs::read_to_string(dir.join("modules.builtin"))
            .unwrap_or_default()
            .lines()
            .map(module_name)
            .collect();
        Ok(ModuleTree {
            dir: dir.to_path_buf(),
            files,
            builtin,
        })
    }

    /// Whether the kernel lacks any of `wanted` built in.
    pub fn needed(&self, wanted: &[&str]) -> bool {
        wanted.iter().any(|m| !self.builtin.contains(*m))
    }

    /// The modules to load for `wanted`, dependencies first, each once,
    /// less what is built in; each checked to be built for `release`.
    pub fn load_order(&self, wanted: &[&str], release: &str) -> Result<Vec<Module>, ModulesError> {
        let mut order = Vec::new();
        let mut seen = BTreeSet::new();
        for name in wanted {
            self.visit(name, release, &mut seen, &mut order)?;
        }
        Ok(order)
    }

    fn visit(
        &self,
        name: &str,
        release: &str,
        seen: &mut BTreeSet<String>,
        order: &mut Vec<Module>,
    ) -> Result<(), ModulesError> {
        // Marked before its dependencies: a cycle (which the kernel would
        // refuse anyway) ends here instead of recursing for ever.
        if self.builtin.contains(name) || !seen.insert(name.to_string()) {
            return Ok(());
        }
        let path = self.files.get(name).ok_or_else(|| ModulesError::Missing {
            name: name.to_string(),
            dir: self.dir.clone(),
        })?;
        let module = Module::read(path)?;
        if module.built_for != release {
            return Err(ModulesError::ForAnotherKernel {
                path: path.clone(),
                vermagic: module.built_for,
                release: release.to_string(),
            });
        }
        for dep in &module.depends {
            self.visit(dep, release, seen, order)?;
        }
        order.push(module);
        Ok(())
    }
}

/// Module files under `dir` by name, not following symbolic links (an
/// installed tree's `build` and `source` point into the kernel sources).
fn walk(dir: &Path, depth: usize, out: &mut BTreeMap<String, PathBuf>) -> std::io::Result<()> {
    if depth > WALK_DEPTH {
        return Ok(());
    }
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let file_type = entry.file_type()?;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if file_type.is_dir() && !name.starts_with('.') {
            walk(&entry.path(), depth + 1, out)?;
        } else if file_type.is_file() && is_module_file(&name) {
            out.entry(module_name(&name))
                .or_insert_with(|| entry.path());
        }
    }
    Ok(())
}

/// A writer that refuses to grow past its limit: a decompressor's output
/// is bounded by it, whatever the input claims.
struct Bounded(Vec<u8>);

impl Write for Bounded {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.0.len() as u64 + buf.len() as u64 > MODULE_LIMIT {
            return Err(std::io::Error::other(format!(
                "decompresses to over {} MiB",
                MODULE_LIMIT >> 20
            )));
        }
        self.0.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// A module file's contents, decompressed by its extension (a plain
/// module is returned as it is, not copied).
fn decompress(name: &str, raw: Vec<u8>) -> Result<Vec<u8>, String> {
    if name.ends_with(".ko") {
        return Ok(raw);
    }
    let raw = &raw[..];
    let mut out = Bounded(Vec::new());
    if name.ends_with(".ko.xz") {
        lzma_rs::xz_decompress(&mut &raw[..], &mut out).map_err(|e| format!("xz: {e}"))?;
    } else if name.ends_with(".ko.zst") {
        let mut decoder =
            ruzstd::decoding::StreamingDecoder::new(raw).map_err(|e| format!("zstd: {e}"))?;
        std::io::copy(&mut decoder, &mut out).map_err(|e| format!("zstd: {e}"))?;
    } else if name.ends_with(".ko.gz") {
        std::io::copy(&mut flate2::read::GzDecoder::new(raw), &mut out)
            .map_err(|e| format!("gzip: {e}"))?;
    } else {
        return Err("not .ko, .ko.xz, .ko.zst or .ko.gz".into());
    }
    Ok(out.0)
}

/// The `key=value` strings of a module's `.modinfo` section.
fn modinfo(image: &[u8]) -> Result<Vec<(String, String)>, String> {
    let elf = object::File::parse(image).map_err(|e| format!("not ELF: {e}"))?;
    let section = elf
        .section_by_name(".modinfo")
        .ok_or("no .modinfo section")?;
    let data = section.data().map_err(|e| format!(".modinfo: {e}"))?;
    Ok(data
        .split(|&b| b == 0)
        .filter_map(|entry| {
            let entry = std::str::from_utf8(entry).ok()?;
            let (k, v) = entry.split_once('=')?;
            Some((k.to_string(), v.to_string()))
        })
        .collect())
}

impl Module {
    /// Reads, decompresses and describes the module in `path`.
    pub fn read(path: &Path) -> Result<Module, ModulesError> {
        let mut raw = Vec::new();
        std::fs::File::open(path)
            .and_then(|f| f.take(MODULE_LIMIT + 1).read_to_end(&mut raw))
            .map_err(|source| ModulesError::Read {
                path: path.to_path_buf(),
                source,
            })?;
        let not_a_module = |why: String| ModulesError::NotAModule {
            path: path.to_path_buf(),
            why,
        };
        if raw.len() as u64 > MODULE_LIMIT {
            return Err(not_a_module(format!("over {} MiB", MODULE_LIMIT >> 20)));
        }
        let file_name = path.to_string_lossy();
        let image = decompress(&file_name, raw).map_err(not_a_module)?;
        let info = modinfo(&image).map_err(not_a_module)?;
        let value = |key: &str| info.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str());
        let built_for = value("vermagic")
            .and_then(|v| v.split_whitespace().next())
            .ok_or_else(|| not_a_module("no vermagic in .modinfo".into()))?
            .to_string();
        let depends = value("depends")
            .unwrap_or("")
            .split(',')
            .filter(|d| !d.is_empty())
            .map(module_name)
            .collect();
        Ok(Module {
            name: value("name").map_or_else(|| module_name(&file_name), String::from),
            image,
            built_for,
            depends,
        })
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A minimal relocatable ELF64 with a `.modinfo` section holding
    /// `fields`, as modpost writes it.
    pub fn fake_module(fields: &[(&str, &str)]) -> Vec<u8> {
        let mut modinfo = Vec::new();
        for (k, v) in fields {
            modinfo.extend_from_slice(format!("{k}={v}\0").as_bytes());
        }
        let shstrtab = b"\0.modinfo\0.shstrtab\0";
        let modinfo_at = 64u64;
        let shstrtab_at = modinfo_at + modinfo.len() as u64;
        let shoff = (shstrtab_at + shstrtab.len() as u64).next_multiple_of(8);
        let mut f = Vec::new();
        f.extend_from_slice(b"\x7fELF\x02\x01\x01\0");
        f.extend_from_slice(&[0; 8]);
        f.extend_from_slice(&1u16.to_le_bytes()); // ET_REL
        f.extend_from_slice(&0x3eu16.to_le_bytes()); // x86-64
        f.extend_from_slice(&1u32.to_le_bytes());
        f.extend_from_slice(&0u64.to_le_bytes()); // e_entry
        f.extend_from_slice(&0u64.to_le_bytes()); // e_phoff
        f.extend_from_slice(&shoff.to_le_bytes());
        f.extend_from_slice(&0u32.to_le_bytes()); // e_flags
        for half in [64u16, 0, 0, 64, 3, 2] {
            // ehsize, phentsize, phnum, shentsize, shnum, shstrndx
            f.extend_from_slice(&half.to_le_bytes());
        }
        f.extend_from_slice(&modinfo);
        f.extend_from_slice(shstrtab);
        f.resize(usize::try_from(shoff).unwrap(), 0);
        let section = |f: &mut Vec<u8>, name: u32, kind: u32, at: u64, size: u64| {
            f.extend_from_slice(&name.to_le_bytes());
            f.extend_from_slice(&kind.to_le_bytes());
            f.extend_from_slice(&0u64.to_le_bytes()); // flags
            f.extend_from_slice(&0u64.to_le_bytes()); // addr
            f.extend_from_slice(&at.to_le_bytes());
            f.extend_from_slice(&size.to_le_bytes());
            f.extend_from_slice(&[0; 8]); // link, info
            f.extend_from_slice(&1u64.to_le_bytes()); // addralign
            f.extend_from_slice(&0u64.to_le_bytes()); // entsize
        };
        section(&mut f, 0, 0, 0, 0);
        section(&mut f, 1, 1, modinfo_at, modinfo.len() as u64); // PROGBITS
        section(&mut f, 10, 3, shstrtab_at, shstrtab.len() as u64); // STRTAB
        f
    }

    pub fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("ferry-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    const RELEASE: &str = "6.1.0-99-amd64";

    fn put(dir: &Path, file: &str, depends: &str, release: &str) {
        let path = dir.join(file);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        let name = module_name(file);
        let vermagic = format!("{release} SMP preempt mod_unload modversions ");
        let image = fake_module(&[
            ("license", "GPL"),
            ("depends", depends),
            ("name", &name),
            ("vermagic", &vermagic),
        ]);
        let data = if file.ends_with(".xz") {
            let mut out = Vec::new();
            lzma_rs::xz_compress(&mut &image[..], &mut out).unwrap();
            out
        } else if file.ends_with(".gz") {
            let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            enc.write_all(&image).unwrap();
            enc.finish().unwrap()
        } else if file.ends_with(".zst") {
            ruzstd::encoding::compress_to_vec(
                &image[..],
                ruzstd::encoding::CompressionLevel::Fastest,
            )
        } else {
            image
        };
        std::fs::write(path, data).unwrap();
    }

    /// A build tree: modules where the build left them, some compressed,
    /// no modules.dep; configfs built in.
    fn build_tree(release_of_fuse: &str) -> PathBuf {
        let dir = scratch("mods");
        put(&dir, "drivers/virtio/virtio_ring.ko.xz", "", RELEASE);
        put(&dir, "drivers/virtio/virtio.ko.zst", "virtio_ring", RELEASE);
        put(
            &dir,
            "drivers/virtio/virtio_pci_modern_dev.ko",
            "virtio",
            RELEASE,
        );
        put(&dir, "drivers/virtio/virtio_pci_legacy_dev.ko", "", RELEASE);
        put(
            &dir,
            "drivers/virtio/virtio_pci.ko",
            "virtio_pci_modern_dev,virtio_pci_legacy_dev,virtio_ring,virtio",
            RELEASE,
        );
        put(&dir, "fs/fuse/fuse.ko.gz", "", release_of_fuse);
        put(
            &dir,
            "fs/fuse/virtiofs.ko",
            "fuse,virtio,virtio_ring",
            RELEASE,
        );
        put(&dir, "fs/loop/a.ko", "b", RELEASE);
        put(&dir, "fs/loop/b.ko", "a", RELEASE);
        std::fs::write(
            dir.join("modules.builtin"),
            "kernel/fs/configfs/configfs.ko\n",
        )
        .unwrap();
        dir
    }

    #[test]
    fn dependencies_come_first_and_once_from_any_compression() {
        let dir = build_tree(RELEASE);
        let tree = ModuleTree::open(&dir).unwrap();
        assert!(tree.needed(&REQUIRED));
        let order: Vec<String> = tree
            .load_order(&["virtio_pci", "virtiofs", "configfs"], RELEASE)
            .unwrap()
            .into_iter()
            .map(|m| m.name)
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
        // A cycle ends; a missing module is named.
        assert_eq!(tree.load_order(&["a"], RELEASE).unwrap().len(), 2);
        assert!(matches!(
            tree.load_order(&["nope"], RELEASE),
            Err(ModulesError::Missing { .. })
        ));
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn a_module_for_another_kernel_is_refused() {
        let dir = build_tree("6.1.0-98-amd64");
        let tree = ModuleTree::open(&dir).unwrap();
        let err = tree.load_order(&["virtiofs"], RELEASE).unwrap_err();
        assert!(
            err.to_string()
                .contains("built for 6.1.0-98-amd64, the kernel is 6.1.0-99-amd64"),
            "{err}"
        );
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn an_installed_tree_is_read_through_modules_dep() {
        let dir = scratch("installed");
        put(&dir, "kernel/fs/fuse/fuse.ko", "", RELEASE);
        // Not listed in modules.dep: not found, even though the file is there.
        put(&dir, "kernel/fs/fuse/virtiofs.ko", "fuse", RELEASE);
        std::fs::write(dir.join("modules.dep"), "kernel/fs/fuse/fuse.ko:\n").unwrap();
        std::fs::write(
            dir.join("modules.builtin"),
            "kernel/drivers/virtio/virtio_pci.ko\nkernel/fs/fuse/virtiofs.ko\n",
        )
        .unwrap();
        let tree = ModuleTree::open(&dir).unwrap();
        assert!(
            !tree.needed(&REQUIRED),
            "both required modules are built in"
        );
        assert!(tree.needed(&[FOR_NETWORK]), "virtio_net is not built in");
        assert_eq!(tree.load_order(&["fuse"], RELEASE).unwrap()[0].name, "fuse");
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn files_that_are_not_modules_get_a_reason() {
        let dir = scratch("notmods");
        let cases: [(&str, &[u8], &str); 4] = [
            ("plain.ko", b"hello", "not ELF"),
            ("bad.ko.xz", b"hello", "xz"),
            ("bad.ko.zst", b"hello", "zstd"),
            ("bad.ko.gz", b"hello", "gzip"),
        ];
        for (file, data, why) in cases {
            std::fs::write(dir.join(file), data).unwrap();
            let err = Module::read(&dir.join(file)).unwrap_err().to_string();
            assert!(err.contains(why), "{file}: {err}");
        }
        std::fs::write(dir.join("nomagic.ko"), fake_module(&[("license", "GPL")])).unwrap();
        let err = Module::read(&dir.join("nomagic.ko"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("no vermagic"), "{err}");
        assert!(matches!(
            ModuleTree::open(&dir.join("nowhere")),
            Err(ModulesError::Read { .. })
        ));
        let empty = dir.join("empty");
        std::fs::create_dir(&empty).unwrap();
        assert!(matches!(
            ModuleTree::open(&empty),
            Err(ModulesError::NoModules(_))
        ));
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn a_decompression_bomb_stops_at_the_limit() {
        let zeros = vec![0u8; usize::try_from(MODULE_LIMIT).unwrap() + 1];
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        enc.write_all(&zeros).unwrap();
        let small = enc.finish().unwrap();
        let err = decompress("x.ko.gz", small).unwrap_err();
        assert!(err.contains("over 64 MiB"), "{err}");
    }
}
