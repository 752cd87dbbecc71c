#!/usr/bin/env bash
# Folds new inputs into the kept corpus and minimizes it:
# fuzz/cmin.sh TARGET [DIR...]
#
# Copies every input of each DIR (default: the scratch directory run.sh
# uses, $FUZZ_SCRATCH or $TMPDIR/ferry-fuzz-corpus/TARGET) into
# fuzz/corpus/TARGET, then keeps only the inputs that add coverage
# (`cargo fuzz cmin`, libFuzzer's -merge=1), under the same sanitizer and
# sandbox settings as run.sh. By default the merge keeps a smallest set of
# inputs that covers every edge (-set_cover_merge=1 -use_counters=0: hit
# counts do not count), which keeps the corpus to a few hundred files;
# FUZZ_CMIN_ARGS="" keeps every input that adds a feature instead.
set -euo pipefail
[ $# -ge 1 ] || { echo "usage: fuzz/cmin.sh TARGET [DIR...]" >&2; exit 2; }
target=$1
shift
here=$(cd "$(dirname "$0")" && pwd)
cd "$here"
. ./env.sh
dirs=("$@")
[ ${#dirs[@]} -gt 0 ] || dirs=("${FUZZ_SCRATCH:-$tmp/ferry-fuzz-corpus/$target}")
mkdir -p "corpus/$target"
for d in "${dirs[@]}"; do
    find "$d" -maxdepth 1 -type f -exec cp -n -t "corpus/$target" {} +
done
sandbox=$tmp/ferry-fuzz-sandbox-cmin-$target-$$
mkdir -p "$sandbox"
trap 'rm -rf "$sandbox"' EXIT
export FERRY_FUZZ_SANDBOX=$sandbox
nice -n 19 cargo fuzz build -s "$sanitizer" "$target"
nice -n 19 cargo fuzz cmin -s "$sanitizer" "$target" "corpus/$target" -- "${limits[@]}" \
    ${FUZZ_CMIN_ARGS--set_cover_merge=1 -use_counters=0}
echo "corpus/$target: $(find "corpus/$target" -type f | wc -l) inputs, $(du -sh "corpus/$target" | cut -f1)"
