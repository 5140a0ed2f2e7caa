#!/usr/bin/env bash
# tests/run-all.sh (what `make test` and .ci/run run): on a fresh machine of this project's kind,
# installs what is missing, builds the test control plane, starts it and the peers, runs every
# check and test, and stops everything again, even on failure or Ctrl-C. Exits non-zero when
# anything failed. Nothing is skipped: a missing component is a failure.
#
#   1. Debian packages (only those missing): docker-registry skopeo prometheus openssl
#      apache2-utils curl containerd runc containernetworking-plugins iptables iproute2; PyPI:
#      moto[server] (only when python3 cannot import it)
#   2. cargo fmt --check; cargo clippy --all-targets --all-features -- -D warnings; cargo deny
#      (licenses, bans, sources; advisories offline against the RustSec snapshot, see
#      tests/advisories.sh); the tests compiled; cargo build --no-default-features; the previous
#      release built for the upgrade test (tests/upgrade/build-previous)
#   3. tests/cluster/build (cached outside the clone), tests/cluster/up (control plane and the one
#      test node: needs root, one per machine), tests/peers/up (after it: it tells the node's
#      containerd about the registries)
#   4. cargo test --all-features (unit + tests/*.rs, with the platform's env); every
#      tests/checks/*.sh (with the platform's env too)
#
# Env: PK_TEST_DIR=DIR to use a fixed directory (default: a new one under /tmp, kept for its logs);
# CARGO_TARGET_DIR as usual. Extra arguments are passed to `cargo test` (e.g. a test name filter).
set -uo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)
cd "$root" || exit 1
# shellcheck source=tests/cluster/lib.sh
. tests/cluster/lib.sh

step() { printf '\n=== %s\n' "$*" >&2; }

# --- 1. prerequisites ----------------------------------------------------------------------------
step "prerequisites"
tests/prereqs.sh || pk_die "installing prerequisites failed"

# --- 2. static checks and compilation (before the platform starts, so it does not idle) --------
failed=()
run() {
  local name=$1
  shift
  step "$name"
  local t=$SECONDS
  # In a log (not a terminal) a step that prints nothing for 20 s says it still runs.
  if pk_heartbeat "$name" "$@"; then
    pk_log "ok: $name ($((SECONDS - t)) s)"
  else
    pk_log "FAILED: $name ($((SECONDS - t)) s)"
    failed+=("$name")
  fi
}

run "cargo fmt --check" cargo fmt --all --check
run "cargo clippy" cargo clippy --all-targets --all-features -- -D warnings
run "cargo deny (licenses, bans, sources)" cargo deny check licenses bans sources
run "cargo deny (advisories, offline RustSec snapshot)" bash tests/advisories.sh
run "compile the tests" cargo test --all-features --no-run
run "cargo build --no-default-features" cargo build --no-default-features
# helm (installed here when missing) is used by tests/in_cluster.rs too, so it runs before them.
run "tests/checks/helm.sh" bash tests/checks/helm.sh
export PK_HELM=${PULLKEEPER_BIN:-$HOME/.cache/pullkeeper/bin}/helm
# The toolchain Cargo.toml declares as rust-version (installed on these machines), named
# explicitly so a newer default toolchain cannot hide a build that needs more than it says.
rust_version=$(awk -F'"' '/^rust-version/ {print $2; exit}' Cargo.toml)
run "cargo build at rust-version $rust_version" cargo "+$rust_version" build --all-features
# The release tests/faults.rs upgrades from (tests/upgrade/previous-release), in the same target
# dir under another executable name.
run "build the previous release (tests/upgrade/build-previous)" bash -c 'tests/upgrade/build-previous >/dev/null'
export PK_PREVIOUS_BIN=${CARGO_TARGET_DIR:-$root/target}/debug/pullkeeper-prev

# --- 3. platform ---------------------------------------------------------------------------------
dir=${PK_TEST_DIR:-$(mktemp -d "${TMPDIR:-/tmp}/pullkeeper-test.XXXXXX")}
dir=$(pk_abs_dir "$dir")
stop_platform() {
  local rc=$?
  trap - EXIT INT TERM
  step "stopping the platform ($dir)"
  tests/peers/down "$dir" || true
  tests/cluster/down "$dir" || true
  pk_log "logs kept in $dir/logs"
  exit "$rc"
}
trap stop_platform EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

step "building the test control plane (a cold build: about 8-10 minutes, with progress)"
t=$SECONDS
tests/cluster/build >/dev/null || pk_die "building the test control plane failed"
pk_log "control-plane binary ready in $((SECONDS - t)) s"

# The demo runs on a platform of its own with the node, which is one per machine: before ours.
run "tests/checks/demo.sh" bash tests/checks/demo.sh

# The node's kubelet execs the built binary as its image credential provider
# (tests/credential_provider.rs): the debug build the steps above made.
export PK_CREDENTIAL_PROVIDER=${PK_CREDENTIAL_PROVIDER:-${CARGO_TARGET_DIR:-$root/target}/debug/pullkeeper}
step "starting the control plane and peers in $dir"
t=$SECONDS
tests/cluster/up "$dir" || pk_die "tests/cluster/up failed"
tests/peers/up "$dir" || pk_die "tests/peers/up failed"
pk_log "platform up in $((SECONDS - t)) s"
# shellcheck disable=SC1091
. "$dir/env"
# shellcheck disable=SC1091
. "$dir/peers.env"

# --- 4. tests and checks against the platform ------------------------------------------------
# The image first: tests/in_cluster.rs installs it onto the node from the test registry.
export PK_IMAGE_ENV=$dir/image.env
run "tests/checks/static-build.sh" bash tests/checks/static-build.sh
# shellcheck disable=SC1091
[[ -e $PK_IMAGE_ENV ]] && . "$PK_IMAGE_ENV"
test_log=$dir/logs/cargo-test.log
# A hung test must not eat CI's whole budget: 45 minutes is far above a normal run.
# shellcheck disable=SC2016 # expanded by the inner bash
run "cargo test --all-features" bash -c 'set -o pipefail; timeout 2700 cargo test --all-features --no-fail-fast "$@" 2>&1 | tee "$0"' \
  "$test_log" "$@"
for check in tests/checks/*.sh; do
  [[ -e $check ]] || continue
  [[ $check == tests/checks/demo.sh ]] && continue # ran before the platform, with its own node
  [[ $check == tests/checks/static-build.sh || $check == tests/checks/helm.sh ]] && continue # ran before cargo test
  run "$check" bash "$check"
done

# One closing line for the whole run, summed over every `cargo test` result line.
read -r passed failed_tests < <(
  awk '/^test result:/ {for (i = 1; i <= NF; i++) {if ($i ~ /^passed;?$/) p += $(i-1); if ($i ~ /^failed;?$/) f += $(i-1)}}
       END {print p + 0, f + 0}' "$test_log" 2>/dev/null || echo "0 0"
)
step "summary"
# Figures the tests measured (tests/in_cluster.rs writes them; passing tests' output is captured).
if [[ -s $dir/logs/figures.txt ]]; then
  pk_log "figures measured by the tests ($dir/logs/figures.txt):"
  cat "$dir/logs/figures.txt"
fi
if ((${#failed[@]})); then
  pk_log "failed steps: ${failed[*]}"
else
  pk_log "every step passed"
fi
echo "tests: $passed passed, $failed_tests failed"
((${#failed[@]} == 0))
