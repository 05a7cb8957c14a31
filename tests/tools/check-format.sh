#!/usr/bin/env bash
# Fails if a C source file is not formatted as .clang-format says.
#   check-format.sh SOURCE_DIR
set -euo pipefail
cd "${1:?usage: check-format.sh SOURCE_DIR}"
command -v clang-format >/dev/null || { echo "clang-format not installed" >&2; exit 1; }
bad=0 n=0
while IFS= read -r -d '' f; do
    n=$((n + 1))
    if ! clang-format --dry-run -Werror "$f" >/dev/null 2>&1; then
        echo "not formatted: $f (run: clang-format -i $f)"
        bad=$((bad + 1))
    fi
done < <(find common ctl primary replica proto tests -name '*.[ch]' -print0 2>/dev/null)
echo "$((n - bad)) passed, $bad failed"
[ "$bad" -eq 0 ]
