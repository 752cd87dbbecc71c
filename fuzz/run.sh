#!/usr/bin/env bash
# Runs one fuzz target for a while: fuzz/run.sh TARGET [SECONDS] [LIBFUZZER_ARGS...]
#
# TARGET: fs_request, pci_config, cli or net_frames. SECONDS: default 60.
# Builds with `cargo fuzz` on the stable toolchain (RUSTC_BOOTSTRAP=1) and
# AddressSanitizer (FUZZ_SANITIZER=none to go without), then fuzzes at
# nice 19, starting from the kept corpus fuzz/corpus/TARGET (read, never
# written) and storing new inputs in a scratch directory
# ($FUZZ_SCRATCH, default $TMPDIR/ferry-fuzz-corpus/TARGET, kept between
# runs). Crashes land in fuzz/artifacts/TARGET/. As root, the shares the
# targets serve live on a 512 MiB tmpfs in a private mount namespace
# (FUZZ_NO_TMPFS=1: a plain directory under $TMPDIR instead); the targets
# also cap file sizes at 256 MiB.
#
# Environment: FUZZ_TIMEOUT (seconds per input before libFuzzer calls it a
# hang, default 30), FUZZ_RSS_MB (default 4096), FUZZ_MALLOC_MB (largest
# single allocation, default 1024), FUZZ_SANITIZER,
# FUZZ_SCRATCH, FUZZ_NO_TMPFS; and the targets' own FERRY_FUZZ_LOG,
# FERRY_FUZZ_VERBOSE, FERRY_FUZZ_SKIP_KNOWN (see fuzz/README.md).
set -euo pipefail

usage() {
    echo "usage: fuzz/run.sh fs_request|pci_config|cli|net_frames [SECONDS] [LIBFUZZER_ARGS...]" >&2
    exit 2
}
[ $# -ge 1 ] || usage
target=$1
shift
case $target in
fs_request | pci_config | cli | net_frames) ;;
*) usage ;;
esac
secs=60
if [ $# -ge 1 ] && [[ $1 =~ ^[0-9]+$ ]]; then
    secs=$1
    shift
fi

here=$(cd "$(dirname "$0")" && pwd)
cd "$here"
. ./env.sh
scratch=${FUZZ_SCRATCH:-$tmp/ferry-fuzz-corpus/$target}
sandbox=$tmp/ferry-fuzz-sandbox-$target-$$
mkdir -p "$scratch" "corpus/$target" "artifacts/$target" "$sandbox"
trap 'rmdir "$sandbox" 2>/dev/null || rm -rf "$sandbox"' EXIT

nice -n 19 cargo fuzz build -s "$sanitizer" "$target"

args=(-max_total_time="$secs" "${limits[@]}" -print_final_stats=1)
if [ -f "dict/$target.dict" ]; then
    args+=(-dict="dict/$target.dict")
fi
# New inputs go to the first directory: the scratch one.
run=(nice -n 19 cargo fuzz run -s "$sanitizer" "$target" "$scratch" "corpus/$target" -- "${args[@]}" "$@")

export FERRY_FUZZ_SANDBOX=$sandbox
if [ "$(id -u)" = 0 ] && [ "${FUZZ_NO_TMPFS:-}" != 1 ] &&
    unshare --mount --propagation private true 2>/dev/null; then
    unshare --mount --propagation private -- sh -c \
        'mount -t tmpfs -o size=512m,mode=0700 ferry-fuzz "$FERRY_FUZZ_SANDBOX" && exec "$@"' \
        sh "${run[@]}"
else
    "${run[@]}"
fi
