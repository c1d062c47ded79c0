#!/usr/bin/env bash
# Build a wheel with `python -m build` from a clean copy of the working tree,
# install it into a fresh venv (no compiler needed at that point) and import
# and run it from outside the source tree.
#   tools/check_wheel.sh
set -euo pipefail
cd "$(dirname "$0")/.."
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
git ls-files -co --exclude-standard | tar -cf - -T - | tar -xf - -C "$work"
mkdir -p "$work/src" && mv "$work"/* "$work/src/" 2>/dev/null || true
python3 -m venv "$work/build-venv"
"$work/build-venv/bin/pip" install --quiet build
"$work/build-venv/bin/python" -m build --wheel -o "$work/dist" "$work/src" > "$work/build.log" 2>&1 \
    || { tail -30 "$work/build.log"; exit 1; }
python3 -m venv "$work/run-venv"
"$work/run-venv/bin/pip" install --quiet "$work"/dist/*.whl
(cd "$work" && "$work/run-venv/bin/python" -c "
import numpy as np, attncore
q = np.ones((1, 2, 3, 4), np.float32)
assert attncore.scaled_dot_product_attention(q, q, q).shape == (1, 2, 3, 4)
print('wheel OK:', [n for n in __import__('os').listdir('$work/dist')][0], attncore.config()['isa_supported'])")
