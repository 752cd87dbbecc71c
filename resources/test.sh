#!/usr/bin/env bash
# The one command that runs every test: prepares the machine (packages,
# guest kernel, initramfs), then runs lints, unit tests and the integration
# tests that boot the real guest (inside the emulated KVM host where this CPU
# has no vmx/svm).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
cd "$(dirname "$here")"
"$here/prepare.sh"
echo "[check] cargo fmt, clippy" >&2
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --quiet -- -D warnings
echo "[test] unit and integration tests" >&2
cargo test --workspace "$@"
