#!/usr/bin/env bash
# Everything a fresh machine needs before Ferry can boot the project guest:
# packages, the guest kernel (cached), the initramfs and the ferry binary.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
cd "$(dirname "$here")"
"$here/install-deps.sh"
"$here/build-kernel.sh" >/dev/null
"$here/build-initramfs.sh" >/dev/null
echo "[cargo] building ferry" >&2
cargo build --workspace --quiet
