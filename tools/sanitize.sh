#!/usr/bin/env bash
# Run attncore's test suite under AddressSanitizer + UndefinedBehaviorSanitizer,
# once per kernel level this CPU supports, without touching the in-place build.
#
#   tools/sanitize.sh [--quick] [--recover] [--levels "avx2 avx512"] [--keep] [--] [PYTEST ARGS...]
#
#   --quick      a fast subset: `-m "not slow"`, 10 hypothesis examples, no
#                CLI/benchmark smoke runs (tests/test_cli_and_benchmarks.py),
#                no 2^20-key numerics test; also SANITIZE_QUICK=1
#   --recover    build with -fsanitize-recover and let the runs go on after a
#                report, to collect every distinct report in one go (default:
#                stop at the first report, -fno-sanitize-recover=all);
#                also SANITIZE_RECOVER=1
#   --levels L   only these kernel levels (space- or comma-separated);
#                also SANITIZE_LEVELS=...
#   --keep       keep the work directory (copy, venv, logs) even on success;
#                it is always kept when something failed; also SANITIZE_KEEP=1
#   anything else (or everything after --) goes to pytest, e.g.
#                tools/sanitize.sh -k guard -x
#
# What it does:
#  1. copies the working tree (tracked files + untracked, non-ignored ones,
#     uncommitted changes included; no *.so) into a fresh temporary directory;
#  2. makes a fresh venv there, installs the build requirements and the `test`
#     extra from pyproject.toml, and builds attncore._core in place in the copy
#     with ATTNCORE_EXTRA_CFLAGS/LDFLAGS = ASan + UBSan flags, OpenMP kept
#     (ATTNCORE_FAIL_NO_OPENMP=1: a lost OpenMP is an error);
#  3. runs pytest once per level (avx512bf16emu and amxbf16emu included, as
#     if they were real levels: ATTNCORE_TEST_EMULATED_AS_REAL=1) with ATTNCORE_ISA=<level>,
#     ATTNCORE_TEST_ONLY_ISA=1 (tests parametrized by kernel level run that
#     level only) and ATTNCORE_SANITIZER=1 (tests marked `no_sanitizer` are
#     skipped; see tests/conftest.py), the sanitizer runtimes in LD_PRELOAD
#     (Python itself is not instrumented) and ASan/UBSan log_path in the work
#     directory, so that reports from test subprocesses are caught too;
#  4. prints one line per level and every distinct report, and exits non-zero
#     if pytest failed or ANY sanitizer report was written, even if pytest passed.
set -euo pipefail

usage() { sed -n '2,/^set -euo/p' "$0" | sed -e '$d' -e 's/^# \{0,1\}//'; }

QUICK=${SANITIZE_QUICK:-0}
RECOVER=${SANITIZE_RECOVER:-0}
LEVELS=${SANITIZE_LEVELS:-}
KEEP=${SANITIZE_KEEP:-0}
while [[ $# -gt 0 ]]; do
    case "$1" in
        --quick) QUICK=1; shift ;;
        --recover) RECOVER=1; shift ;;
        --levels) LEVELS=${2:?--levels needs a value}; shift 2 ;;
        --levels=*) LEVELS=${1#*=}; shift ;;
        --keep) KEEP=1; shift ;;
        -h|--help) usage; exit 0 ;;
        --) shift; break ;;
        *) break ;;
    esac
done
PYTEST_ARGS=("$@")

SRC=$(git -C "$(dirname "$0")" rev-parse --show-toplevel)
PY=${PYTHON:-python3}
WORK=$(mktemp -d "${TMPDIR:-/tmp}/attncore-sanitize.XXXXXX")
LOGS="$WORK/logs"
mkdir -p "$WORK/src" "$LOGS"
FAILED=1
cleanup() {
    if [[ $FAILED == 0 && $KEEP == 0 ]]; then
        rm -rf "$WORK"
    else
        echo "sanitize: work directory kept: $WORK (logs in $LOGS)" >&2
    fi
}
trap cleanup EXIT
say() { printf '\n== sanitize: %s\n' "$*"; }

# the developer's in-place build must come out of this untouched
inplace_sums() { (cd "$SRC" && find attncore -maxdepth 1 -name '_core*.so' -exec md5sum {} + 2>/dev/null | sort) || true; }
INPLACE_BEFORE=$(inplace_sums)

# --- 1. copy the working tree ------------------------------------------------
say "copying $SRC -> $WORK/src"
(cd "$SRC" && git ls-files -z -co --exclude-standard) |
    while IFS= read -r -d '' f; do
        # tracked files deleted in the working tree are listed too; no built objects
        [[ -e "$SRC/$f" && "$f" != *.so ]] && printf '%s\0' "$f"
    done |
    tar -C "$SRC" --null -T - -cf - | tar -C "$WORK/src" -xf -
# what was tested: HEAD plus the uncommitted changes at copy time
git -C "$SRC" diff HEAD > "$LOGS/worktree.diff" || true
echo "HEAD $(git -C "$SRC" rev-parse --short HEAD), $(git -C "$SRC" diff HEAD --name-only | wc -l) files changed" \
    "+ $(git -C "$SRC" ls-files -o --exclude-standard | wc -l) untracked (diff: $LOGS/worktree.diff)"
cd "$WORK/src"

# --- 2. venv + sanitizer build -------------------------------------------------
say "venv in $WORK/venv"
"$PY" -m venv "$WORK/venv"
VPY="$WORK/venv/bin/python"
pip_install() {
    "$VPY" -m pip install "$@" >> "$LOGS/pip.log" 2>&1 || {
        tail -30 "$LOGS/pip.log"; echo "sanitize: pip install failed (log: $LOGS/pip.log)" >&2; exit 1; }
}
pip_install --upgrade pip
"$VPY" -c 'import tomllib' 2>/dev/null || pip_install tomli
mapfile -t REQS < <("$VPY" - <<'EOF' || echo "sanitize: cannot read pyproject.toml" >&2
try:
    import tomllib
except ImportError:
    import tomli as tomllib
with open("pyproject.toml", "rb") as f:
    p = tomllib.load(f)
for r in p["build-system"]["requires"] + p["project"]["optional-dependencies"]["test"]:
    print(r)
EOF
)
[[ ${#REQS[@]} -gt 0 ]] || exit 1
echo "installing: ${REQS[*]}"
pip_install "${REQS[@]}"

SAN_FLAGS="-fsanitize=address,undefined -fno-omit-frame-pointer -g -O1"
if [[ $RECOVER == 1 ]]; then
    SAN_FLAGS+=" -fsanitize-recover=address,undefined"
    HALT=0
else
    SAN_FLAGS+=" -fno-sanitize-recover=all"
    HALT=1
fi
export ATTNCORE_EXTRA_CFLAGS="$SAN_FLAGS -fopenmp"
export ATTNCORE_EXTRA_LDFLAGS="$SAN_FLAGS -fopenmp"
export ATTNCORE_FAIL_NO_OPENMP=1
say "building in place with: $ATTNCORE_EXTRA_CFLAGS"
BUILD_START=$SECONDS
"$VPY" setup.py build_ext --inplace > "$LOGS/build.log" 2>&1 || {
    tail -40 "$LOGS/build.log"; echo "sanitize: build failed (full log: $LOGS/build.log)" >&2; exit 1; }
grep -i "warning" "$LOGS/build.log" | grep -v "^\s*$" | sort -u | head -20 || true
echo "built in $((SECONDS - BUILD_START)) s"
SO=$(ls attncore/_core*.so)
[[ "$(ldd "$SO")" == *libasan* ]] || { echo "sanitize: $SO is not linked against libasan" >&2; exit 1; }

# Python is not instrumented: the runtimes must be loaded first (libubsan
# brings libstdc++ in at start-up, so ASan's __cxa_throw interceptor finds it).
# PYTHONMALLOC=malloc: Python objects get ASan redzones too. detect_leaks=0:
# CPython frees little at exit. allocator_may_return_null=1: a huge request
# (size-overflow tests) returns NULL as malloc does instead of being a report.
# Reports go to log_path files so that those of test subprocesses count too.
lib() { readlink -f "$(gcc -print-file-name="$1")"; }
PRELOAD="$(lib libasan.so) $(lib libubsan.so)"
san_env() {  # san_env TAG -- the environment of every instrumented process
    env LD_PRELOAD="$PRELOAD" PYTHONMALLOC=malloc PYTHONPATH="$WORK/src" \
        ASAN_OPTIONS="detect_leaks=0:halt_on_error=$HALT:abort_on_error=0:allocator_may_return_null=1:print_summary=1:log_path=$LOGS/asan-$1" \
        UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=$HALT:print_summary=1:log_path=$LOGS/ubsan-$1" \
        "${@:2}"
}

san_env probe "$VPY" -c 'from attncore import _core, _config
assert _core.openmp_enabled(), "OpenMP was dropped from the sanitizer build"
print("compiler:", _core.compiler(), "| OpenMP: yes | built:", " ".join(_config.built_isas()))'
SUPPORTED=$(san_env probe "$VPY" -c 'from attncore import _config; print(" ".join(_config.supported_isas()))')
if [[ -z "$LEVELS" ]]; then
    LEVELS=$SUPPORTED
else
    LEVELS=${LEVELS//,/ }
    for l in $LEVELS; do
        [[ " $SUPPORTED " == *" $l "* ]] || { echo "sanitize: level $l not supported here ($SUPPORTED)" >&2; exit 2; }
    done
fi

# --- 3. one pytest run per level ----------------------------------------------
QUICK_ARGS=()
if [[ $QUICK == 1 ]]; then
    # the numerics test over 2^20..2^22 keys alone takes ~10 min on the portable level
    QUICK_ARGS=(-m "not slow" --ignore=tests/test_cli_and_benchmarks.py
                --deselect tests/test_numerics.py::test_long_key_ranges_do_not_accumulate_error)
    export ATTNCORE_HYPOTHESIS_EXAMPLES=${ATTNCORE_HYPOTHESIS_EXAMPLES:-10}
fi

# every report in one level's logs, deduplicated: "COUNT<TAB>kind | where | message".
# ASan writes whole reports to its log_path files. With ASan and UBSan both
# loaded, UBSan's log_path file gets only its "SUMMARY: ... file:line:col" line
# and the report itself ("file:line:col: runtime error: ...") goes to stderr:
# for the pytest process that is the pytest log (pytest runs with
# --capture=sys, so nothing is lost when a report ends the process); for a
# test's subprocess only the location in the SUMMARY line is sure to survive.
summarise_reports() {  # summarise_reports LEVEL
    "$VPY" - "$LOGS" "$1" <<'EOF'
import collections, glob, os, re, sys
logs, level = sys.argv[1], sys.argv[2]
files = sorted(glob.glob(os.path.join(logs, f"asan-{level}.*")) + glob.glob(os.path.join(logs, f"ubsan-{level}.*")))
texts = [open(p, errors="replace").read() for p in files + [os.path.join(logs, f"pytest-{level}.log")]]
seen = collections.Counter()
# UBSan: one SUMMARY line per report; the message from a "runtime error" line, if any
messages, counted = collections.defaultdict(set), collections.Counter()
for text in texts:
    for m in re.finditer(r"(\S+?:\d+(?::\d+)?): runtime error: ([^\n]*)", text):
        messages[os.path.normpath(m.group(1))].add(re.sub(r"0x[0-9a-f]+", "0x..", m.group(2)))
first_test, test = {}, None   # the test that was running (pytest -v names it first)
for line in texts[-1].splitlines():
    test = (re.match(r"(tests/\S+::\S+)", line) or [None, test])[1]
    m = re.search(r"(\S+?:\d+(?::\d+)?): runtime error:", line)
    if m and test:
        first_test.setdefault(os.path.normpath(m.group(1)), test)
for text in texts[:-1]:
    for m in re.finditer(r"SUMMARY: UndefinedBehaviorSanitizer: \S+ (\S+?) in", text):
        counted[os.path.normpath(m.group(1))] += 1
for loc in messages:
    counted[loc] = max(counted[loc], 1)
for loc, n in counted.items():
    msg = " / ".join(sorted(messages[loc])) or "(message went to a subprocess's stderr)"
    seen[f"UBSan | {loc} | {msg}" + (f" [first in {first_test[loc]}]" if loc in first_test else "")] += n
# ASan (and LSan): the kind, the access and the first frames outside system headers
for text in texts:
    for m in re.finditer(r"ERROR: (AddressSanitizer|LeakSanitizer): (\S+)(.*?)(?=\n=+\n|\n==\d+==ABORTING|\Z)",
                         text, re.S):
        tool, kind, body = m.groups()
        access = re.search(r"^(READ|WRITE) of size \d+", body, re.M)
        frames = [f"{os.path.basename(f)} {fn}" for fn, f in re.findall(r"#\d+ 0x[0-9a-f]+ in (\S+) (\S+:\d+)", body)
                  if not f.startswith("/usr/") and "libsanitizer" not in f]
        what = kind + (f" ({access.group(0)})" if access else "")
        seen[f"{'ASan' if tool == 'AddressSanitizer' else 'LSan'} | {' < '.join(frames[:3]) or '?'} | {what}"] += 1
for report, n in sorted(seen.items()):
    print(f"{n}\t{report}")
EOF
}

declare -A SUMMARY
STATUS=0
for level in $LEVELS; do
    say "level $level"
    START=$SECONDS
    set +e
    san_env "$level" ATTNCORE_ISA="$level" ATTNCORE_TEST_ONLY_ISA=1 ATTNCORE_TEST_EMULATED_AS_REAL=1 ATTNCORE_SANITIZER=1 \
        "$VPY" -m pytest -p no:cacheprovider --capture=sys -v -rfEs --durations=10 "${QUICK_ARGS[@]}" "${PYTEST_ARGS[@]}" \
        2>&1 | tee "$LOGS/pytest-$level.log"
    rc=${PIPESTATUS[0]}
    set -e
    elapsed=$((SECONDS - START))
    counts=$(grep -E '^=+ .*( passed| failed| error| skipped| deselected| no tests ran).* in [0-9.]+s' \
        "$LOGS/pytest-$level.log" | tail -1 | sed -E 's/^=+ //; s/ in [0-9.]+s.*//' || true)
    if [[ -z "$counts" ]]; then
        last=$(grep -E '^tests/\S+::' "$LOGS/pytest-$level.log" | tail -1 | awk '{print $1}' || true)
        counts="pytest died (exit $rc) during ${last:-?}"
    fi
    reports=$(summarise_reports "$level")
    nfiles=$(find "$LOGS" \( -name "asan-$level.*" -o -name "ubsan-$level.*" \) -size +0c | wc -l)
    nreports=$(printf '%s' "$reports" | awk -F'\t' '{s += $1} END {print s + 0}')
    if [[ $nfiles -gt 0 && $nreports -eq 0 ]]; then nreports=$nfiles; fi  # unparsed, still a report
    SUMMARY[$level]="$level: $counts, $nreports sanitizer reports ($((elapsed / 60))m$((elapsed % 60))s)"
    [[ -n "$reports" ]] && SUMMARY[$level]+=$'\n'"$(printf '%s\n' "$reports" | sed 's/^/    /')"
    if [[ $rc -ne 0 && $rc -ne 5 ]] || [[ $nreports -gt 0 ]]; then STATUS=1; fi
done

# --- 4. summary ------------------------------------------------------------------
say "summary (logs: $LOGS)"
for level in $LEVELS; do printf '%s\n' "${SUMMARY[$level]}"; done
if [[ "$(inplace_sums)" != "$INPLACE_BEFORE" ]]; then
    # this script builds only in $WORK; someone else rebuilt meanwhile, unless it has ASan in it
    if [[ "$(ldd "$SRC"/attncore/_core*.so 2>/dev/null)" == *libasan* ]]; then
        echo "sanitize: BUG: the in-place build in $SRC/attncore was replaced by a sanitizer build" >&2
        STATUS=1
    else
        echo "sanitize: note: $SRC/attncore/_core*.so changed during the run (another build, not this script)" >&2
    fi
fi
if [[ $STATUS == 0 ]]; then
    echo "sanitize: OK"
    FAILED=0
else
    echo "sanitize: FAILED (pytest failure or sanitizer reports; full reports in $LOGS/asan-* ubsan-*)"
fi
exit $STATUS
