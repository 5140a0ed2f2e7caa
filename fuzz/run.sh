#!/usr/bin/env bash
# fuzz/run.sh (`make fuzz`): runs every fuzz target of fuzz/ for a set time each with cargo-fuzz
# on the nightly toolchain, growing the committed corpus under fuzz/corpus/TARGET, and prints per
# target the CPU seconds it used, the runs libFuzzer made and whether it crashed. Exits non-zero
# on any crash; the input that crashed is kept under fuzz/artifacts/TARGET/ (not committed): turn
# it into a regression unit test next to the code it broke, then fix.
#
# Env: PK_FUZZ_SECONDS (default 600 per target), PK_FUZZ_TARGETS (default: all, space-separated),
# PK_FUZZ_JOBS (default 1: parallel libFuzzer workers per target; CPU time grows with it).
# The build is without a sanitizer: pullkeeper forbids unsafe code, and AddressSanitizer would
# double the build and slow every run for little more than Rust's own checks (debug assertions
# and overflow checks are on).
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)
cd "$root/fuzz"
CARGO_FUZZ_VERSION=0.13.2
seconds=${PK_FUZZ_SECONDS:-600}
jobs=${PK_FUZZ_JOBS:-1}
targets=${PK_FUZZ_TARGETS:-config http_mapping jwt_exp www_authenticate selector render_roundtrip}
export CARGO_TARGET_DIR=${PK_FUZZ_TARGET_DIR:-$root/fuzz/target}

rustup run nightly rustc --version >/dev/null 2>&1 ||
  { echo "fuzz: the nightly toolchain is missing (rustup toolchain install nightly)" >&2; exit 1; }
if ! cargo fuzz --version 2>/dev/null | grep -q "$CARGO_FUZZ_VERSION"; then
  echo "fuzz: installing cargo-fuzz $CARGO_FUZZ_VERSION" >&2
  cargo install --locked cargo-fuzz --version "$CARGO_FUZZ_VERSION"
fi

echo "fuzz: building the targets (nightly, release with debug assertions, no sanitizer)" >&2
cargo +nightly fuzz build --sanitizer none

crashed=()
printf '%-18s %8s %8s %12s %8s  %s\n' target wall_s cpu_s runs corpus result
for t in $targets; do
  mkdir -p "corpus/$t"
  log=$(mktemp "${TMPDIR:-/tmp}/pk-fuzz-$t.XXXXXX")
  cpu_file=$log.cpu
  start=$SECONDS
  rc=0
  # GNU time reports the CPU seconds (user + system) of the run and its workers.
  # With -jobs, libFuzzer forks its workers and sends their output (the final stats included) to
  # fuzz-N.log in the working directory instead: only ask for them when more than one is wanted.
  parallel=()
  ((jobs > 1)) && parallel=(-jobs="$jobs" -workers="$jobs")
  /usr/bin/time -f '%U %S' -o "$cpu_file" cargo +nightly fuzz run --sanitizer none "$t" "corpus/$t" -- \
    -max_total_time="$seconds" "${parallel[@]}" -rss_limit_mb=2048 \
    -max_len=4096 -timeout=10 -print_final_stats=1 >"$log" 2>&1 || rc=$?
  wall=$((SECONDS - start))
  cpu=$(awk 'END {printf "%d", $1 + $2}' "$cpu_file" 2>/dev/null || echo "?")
  logs=("$log")
  ((jobs > 1)) && logs+=(fuzz-*.log)
  runs=$({ grep -hEo 'stat::number_of_executed_units: *[0-9]+' "${logs[@]}" 2>/dev/null || true; } |
    grep -Eo '[0-9]+$' | awk '{s += $1} END {print s + 0}')
  size=$(find "corpus/$t" -type f | wc -l)
  if ((rc == 0)); then result=ok; else result="CRASH (rc $rc, log $log)"; crashed+=("$t"); fi
  printf '%-18s %8s %8s %12s %8s  %s\n' "$t" "$wall" "$cpu" "$runs" "$size" "$result"
  rm -f "$cpu_file"
  ((rc == 0)) && rm -f "$log"
done
if ((${#crashed[@]})); then
  echo "fuzz: crashes in: ${crashed[*]} (inputs under fuzz/artifacts/)" >&2
  exit 1
fi
