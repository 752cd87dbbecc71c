# Sourced by run.sh and cmin.sh: the settings both build and run under.
# Expects $target; sets $sanitizer, $tmp and the libFuzzer limits in
# $limits.

# cargo fuzz needs nightly features; the stable toolchain lends them.
export RUSTC_BOOTSTRAP=1
# Every finding is fixed, so none is steered around unless asked
# (FERRY_FUZZ_SKIP_KNOWN, fuzz/README.md).
export FERRY_FUZZ_SKIP_KNOWN=${FERRY_FUZZ_SKIP_KNOWN:-}
sanitizer=${FUZZ_SANITIZER:-address}
tmp=${TMPDIR:-/tmp}
# -malloc_limit_mb: a single allocation above 1 GiB is a finding (with the
# default, the RSS limit, a 4 GiB - 1 allocation went unreported).
limits=(-timeout="${FUZZ_TIMEOUT:-30}" -rss_limit_mb="${FUZZ_RSS_MB:-4096}"
    -malloc_limit_mb="${FUZZ_MALLOC_MB:-1024}")
