#!/usr/bin/env bash
# Runs `cargo test "$@"`. When it fails, the reason of each failing test (its panic message,
# cut to a few lines) is repeated last, where a CI log's tail shows it.
set -uo pipefail
log=$(mktemp)
trap 'rm -f "$log"' EXIT
"${CARGO:-cargo}" test "$@" 2>&1 | tee "$log"
rc=${PIPESTATUS[0]}
if [ "$rc" -ne 0 ]; then
    echo
    echo "== why it failed (cargo test $*) =="
    awk '/panicked at/ { n = 12 } n > 0 && !/^note: / { print substr($0, 1, 400); n-- }' "$log" | head -n 150
fi
exit "$rc"
