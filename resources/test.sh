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
log=$(mktemp)
trap 'rm -f "$log"' EXIT
set +e
cargo test --workspace --all-targets "$@" 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
# The DAX stress tests (ignored in the run above) keep guest CPUs busy for
# their whole run: alone, after the suite, so they add no load beside the
# other guests (the emulated KVM host went down once with them in the
# parallel run).
echo "[test] DAX stress, alone" >&2
# Its own bound: the two stages' emulated hosts together stay within CI's
# 90 minutes even if both stall: the suite's 3600 s (it takes about 1200 s
# on this 2-core machine) and this stage's 600 s (the stress tests take
# about 30 s), plus QEMU's 120 s grace each and the builds.
FERRY_EMU_TIMEOUT=${FERRY_EMU_TIMEOUT_STRESS:-600} \
    cargo test -p ferry-tests --test integration -- --ignored dax::stress --test-threads=1 2>&1 |
    tee -a "$log"
stress_status=${PIPESTATUS[0]}
[ "$status" -ne 0 ] || status=$stress_status
# The fuzz targets' kept corpus, replayed through the same code (seconds;
# fuzz/ is a workspace of its own).
echo "[test] fuzz corpus replay" >&2
cargo test --manifest-path fuzz/Cargo.toml 2>&1 | tee -a "$log"
fuzz_status=${PIPESTATUS[0]}
[ "$status" -ne 0 ] || status=$fuzz_status
set -e
# What failed, again at the very end: a CI log shown by its tail (the
# fuzz replay prints hundreds of lines) must still show why.
if [ "$status" -ne 0 ]; then
    echo "[test] failures, repeated from above:"
    sed 's/\x1b\[[0-9;]*m//g' "$log" | awk '
        /^failures:$/ && !inside { inside = 1; shown = 0 }
        inside && shown < 120 { print; shown++ }
        /^test result:/ { inside = 0 }'
    # A test binary that never printed its result (killed by the emulated
    # host's watchdog, say) has no "failures:" block: show the slow tests,
    # the test that was running (the integration tests run one at a time,
    # each line "test NAME ... " printed as it starts), what cargo said,
    # and the watchdog's evidence.
    echo "[test] stops, slow tests and hangs, repeated from above:"
    sed 's/\x1b\[[0-9;]*m//g' "$log" | awk '
        /^test .* \.\.\. / { last = $0 }
        /^test result:/ { last = "" }
        /^\[slow\]/ || /has been running for over/ || /^error: / || /emulated-host:/ { print }
        /emulated-host: the command ran past/ { watchdog = 80; next }
        watchdog > 0 { print; watchdog-- }
        END { if (last != "") print "last test started, never ended: " substr(last, 1, 200) }'
fi
# One closing line for the whole run, summed over every test binary.
sed 's/\x1b\[[0-9;]*m//g' "$log" | awk '
    /^test result:/ { for (i = 1; i <= NF; i++) { if ($i ~ /^passed/) p += $(i-1); if ($i ~ /^failed/) f += $(i-1) } }
    END { printf "tests: %d passed, %d failed\n", p, f }'
exit "$status"
