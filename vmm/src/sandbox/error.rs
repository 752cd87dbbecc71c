//! Why a thread could not be confined. Ferry does not run a guest
//! half-confined: each of these stops it. The cause is each error's
//! `source()`, not part of its message: the error chain (`{:#}`) prints it
//! once.

use super::Role;

#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    #[error("Landlock for {role}")]
    Landlock {
        role: Role,
        #[source]
        source: landlock::RulesetError,
    },
    /// The share's directory could not be opened to name it in the rule.
    #[error("Landlock for {role}")]
    SharePath {
        role: Role,
        #[source]
        source: landlock::PathFdError,
    },
    #[error("seccomp filter for {role}")]
    Seccomp {
        role: Role,
        #[source]
        source: seccompiler::Error,
    },
}
