//! Ferry confines itself once the VM is set up. There is no external
//! daemon: the FUSE server runs with Ferry's privileges, so each thread
//! role gets only what it needs:
//!
//! - every thread: `no_new_privs`;
//! - seccomp (`seccompiler`), one allow-list per role: the main loop, the
//!   vCPUs, the file servers (queue workers), the network worker. A forbidden system call
//!   traps; the handler names the thread and the call and stops Ferry.
//! - Landlock, where the kernel has it: a file server may open files only
//!   beneath its share (read-only shares read-only); a vCPU and the
//!   network worker may open none.
//!   The main thread, which opens nothing the guest names, has seccomp only.
//!
//! `--sandbox off` skips all of it, for debugging.

mod error;
mod landlock_rules;
mod seccomp_filters;
mod sigsys;

use std::sync::Arc;

use anyhow::{Context, Result};
use ferry_devices::virtio::fs::{ConfineFileServer, FsShare};
use ferry_devices::virtio::net::ConfineNetwork;
use seccompiler::BpfProgram;

pub use error::SandboxError;
pub use seccomp_filters::Role;

/// `--sandbox`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum SandboxMode {
    /// seccomp per thread role, Landlock, no_new_privs.
    On,
    /// No confinement (for debugging; the guest is not held to its shares
    /// by the kernel then, only by the file server's own checks).
    Off,
}

/// The compiled filters, shared by the threads that apply them.
struct Filters {
    main: BpfProgram,
    vcpu: BpfProgram,
    file_server: BpfProgram,
    network: BpfProgram,
    /// Stacked on the file server's: clone3 answers ENOSYS so that thread
    /// creation goes through clone, whose flags a filter can check.
    no_clone3: BpfProgram,
}

#[derive(Clone)]
pub struct Sandbox {
    filters: Option<Arc<Filters>>,
}

impl Sandbox {
    /// Prepares the sandbox: call before any other thread starts. With
    /// `SandboxMode::On` this sets `no_new_privs` (inherited by every
    /// thread), installs the handler that reports seccomp violations and
    /// compiles the filters. `violation_status` is the exit status a
    /// violation ends Ferry with.
    pub fn prepare(mode: SandboxMode, violation_status: i32) -> Result<Sandbox> {
        if mode == SandboxMode::Off {
            log::warn!("sandbox off: no seccomp filters, no Landlock");
            return Ok(Sandbox { filters: None });
        }
        // SAFETY: prctl with constant arguments.
        if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
            return Err(std::io::Error::last_os_error()).context("prctl(PR_SET_NO_NEW_PRIVS)");
        }
        sigsys::install(violation_status).context("SIGSYS handler")?;
        let filters = Filters {
            main: seccomp_filters::compile(Role::Main)?,
            vcpu: seccomp_filters::compile(Role::Vcpu)?,
            file_server: seccomp_filters::compile(Role::FileServer)?,
            network: seccomp_filters::compile(Role::Network)?,
            no_clone3: seccomp_filters::no_clone3()?,
        };
        Ok(Sandbox {
            filters: Some(Arc::new(filters)),
        })
    }

    pub fn enabled(&self) -> bool {
        self.filters.is_some()
    }

    /// Confines the calling thread as a vCPU.
    pub fn confine_vcpu(&self) -> Result<(), SandboxError> {
        let Some(f) = &self.filters else {
            return Ok(());
        };
        landlock_rules::restrict(Role::Vcpu, None)?;
        apply(Role::Vcpu, &[&f.vcpu])
    }

    /// Confines the calling (main) thread; every other thread must have
    /// started already, or it would inherit this filter.
    pub fn confine_main(&self) -> Result<(), SandboxError> {
        let Some(f) = &self.filters else {
            return Ok(());
        };
        apply(Role::Main, &[&f.main])
    }

    /// What a virtio-fs device runs on the thread that starts its workers.
    pub fn file_server(&self) -> Option<ConfineFileServer> {
        let f = self.filters.clone()?;
        Some(Arc::new(move |share: &FsShare| {
            landlock_rules::restrict(Role::FileServer, Some(share))?;
            // The allow-list last: it forbids seccomp(2) itself.
            apply(Role::FileServer, &[&f.no_clone3, &f.file_server])?;
            Ok(())
        }))
    }

    /// What the virtio-net device runs on the thread that starts its
    /// worker: no file access, the network role's system calls.
    pub fn network(&self) -> Option<ConfineNetwork> {
        let f = self.filters.clone()?;
        Some(Box::new(move || {
            landlock_rules::restrict(Role::Network, None)?;
            apply(Role::Network, &[&f.no_clone3, &f.network])?;
            Ok(())
        }))
    }
}

fn apply(role: Role, programs: &[&BpfProgram]) -> Result<(), SandboxError> {
    sigsys::set_thread_role(role);
    for p in programs {
        seccompiler::apply_filter(p).map_err(|source| SandboxError::Seccomp { role, source })?;
    }
    log::debug!(
        "thread '{}' confined as {role}",
        std::thread::current().name().unwrap_or("?")
    );
    Ok(())
}

#[cfg(test)]
mod tests;
