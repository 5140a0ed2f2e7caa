#!/usr/bin/env bash
# `make demo` (cargo build) and `make test` (cargo test) share one build of the dependency graph:
# cargo compiles a crate once per distinct feature set, and a dev-dependency that turns on a
# feature of a crate both builds use (tokio's test-util, serde_json's float_roundtrip, …) makes
# cargo compile that crate, and everything above it, a second time for the tests. This compares
# the features every shared package gets with and without the dev-dependencies (`cargo tree`,
# from Cargo.lock, no build) and fails naming each package whose features differ; the fix is to
# turn those features on in [dependencies] too (Cargo.toml says so).
set -euo pipefail
cd "$(dirname "$0")/../.."

fail() { echo "one-build.sh: FAIL: $*" >&2; exit 1; }
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT

tree() { cargo tree --locked --all-features -f '{p} {f}' --prefix none -e "$1"; }
tree normal,build >"$tmp/build.txt" || fail "cargo tree (normal, build) failed"
tree normal,build,dev >"$tmp/test.txt" || fail "cargo tree (normal, build, dev) failed"
python3 - "$tmp/build.txt" "$tmp/test.txt" <<'PY' || fail "cargo build and cargo test would compile these crates twice"
import sys

def features(path):
    out = {}
    for line in open(path):
        words = line.replace(" (*)", "").replace(" (proc-macro)", "").split()
        if len(words) < 2 or words[0] == "pullkeeper":
            continue
        out.setdefault(" ".join(words[:2]), set()).update(f for f in (words[2:3] or [""])[0].split(",") if f)
    return out

build, test = features(sys.argv[1]), features(sys.argv[2])
differ = {p: sorted(test[p] - build[p]) for p in build if p in test and test[p] != build[p]}
for package, extra in sorted(differ.items()):
    print(f"one-build.sh: {package}: features only the test build turns on: {', '.join(extra)}", file=sys.stderr)
print(f"one-build.sh: {len(build)} packages shared by cargo build and cargo test, "
      f"{len(differ)} with different features; {len(set(test) - set(build))} only in the test build")
sys.exit(1 if differ else 0)
PY
echo "one-build.sh: ok"
