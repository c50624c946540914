#!/usr/bin/env bash
# Runs every test (`just test`). The whole output is kept in
# $target/test-output.log; when something fails, each failure's panic
# message is printed again at the very end, where a CI log's tail shows it.
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
target="${CARGO_TARGET_DIR:-target}"
mkdir -p "$target"
log="$target/test-output.log"
cargo test --workspace --no-fail-fast "$@" 2>&1 | tee "$log"
rc=${PIPESTATUS[0]}
if [ "$rc" -ne 0 ]; then
    echo
    echo "==== what failed (the whole output is in $log) ===="
    # The test's name line, the panic line and the message after it.
    grep -E -A6 "^---- .* stdout ----$|panicked at" "$log" \
        | grep -v -E "^ +[0-9]+: |^ +at |^stack backtrace:|^note: " | head -120
fi
exit "$rc"
