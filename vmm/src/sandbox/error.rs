//! Why a thread could not be confined. Ferry does not run a guest
//! half-confined: each of these stops it.

use super::Role;

#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    #[error("Landlock for {role}: {source}")]
    Landlock {
        role: Role,
        #[source]
        source: landlock::RulesetError,
    },
    /// The share's directory could not be opened to name it in the rule.
    #[error("Landlock for {role}: {source}")]
    SharePath {
        role: Role,
        #[source]
        source: landlock::PathFdError,
    },
    #[error("seccomp filter for {role}: {source}")]
    Seccomp {
        role: Role,
        #[source]
        source: seccompiler::Error,
    },
}
