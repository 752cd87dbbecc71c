//! Landlock for the calling thread: a file server may open and change files
//! only beneath its share (read-only for a read-only share), a vCPU none.
//! This holds even where the file server's own checks would not: a
//! directory the guest holds that a host process moves out of the share
//! stays reachable by descriptor, but Landlock judges the file's current
//! place in the host's tree.
//!
//! Best effort: on a kernel without Landlock the thread carries on with
//! seccomp only, and Ferry says so once.

use std::sync::atomic::{AtomicBool, Ordering};

use ferry_devices::virtio::fs::FsShare;
use landlock::{
    Access, AccessFs, PathBeneath, PathFd, Ruleset, RulesetAttr, RulesetCreatedAttr, RulesetStatus,
    ABI,
};

use super::{Role, SandboxError};

/// The newest ABI Ferry knows the file rights of; older kernels get what
/// they support of it.
const ABI_WANTED: ABI = ABI::V6;

static WARNED: AtomicBool = AtomicBool::new(false);

/// Restricts the calling thread for `role`; `share` is the file server's.
pub(super) fn restrict(role: Role, share: Option<&FsShare>) -> Result<(), SandboxError> {
    let err = |source| SandboxError::Landlock { role, source };
    let mut ruleset = Ruleset::default()
        .handle_access(AccessFs::from_all(ABI_WANTED))
        .map_err(err)?
        .create()
        .map_err(err)?;
    if let Some(share) = share {
        let access = if share.readonly {
            AccessFs::from_read(ABI_WANTED)
        } else {
            AccessFs::from_all(ABI_WANTED)
        };
        let root =
            PathFd::new(&share.path).map_err(|source| SandboxError::SharePath { role, source })?;
        ruleset = ruleset
            .add_rule(PathBeneath::new(root, access))
            .map_err(err)?;
    }
    let status = ruleset.restrict_self().map_err(err)?;
    if status.ruleset == RulesetStatus::NotEnforced && !WARNED.swap(true, Ordering::Relaxed) {
        log::warn!(
            "this kernel has no Landlock: the file server is confined by seccomp and its own \
             checks only"
        );
    }
    log::debug!("Landlock for {role}: {:?}", status.ruleset);
    Ok(())
}
