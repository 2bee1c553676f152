#!/usr/bin/env bash
# Runs one fuzz target for SECONDS (default 600) from its seeds; the log goes to fuzz/logs/.
# Usage (from the repository root): fuzz/run_fuzz.sh TARGET [SECONDS] [extra libFuzzer flags]
set -euo pipefail
cd "$(dirname "$0")"
target=$1
seconds=${2:-600}
shift $(( $# >= 2 ? 2 : 1 ))
mkdir -p "corpus/$target" logs
exec cargo +nightly fuzz run -O "$target" "corpus/$target" "seeds/$target" -- \
    -max_total_time="$seconds" -print_final_stats=1 "$@" > "logs/$target.log" 2>&1
