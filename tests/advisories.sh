#!/usr/bin/env bash
# tests/advisories.sh: `cargo deny check advisories`, offline, against the dated snapshot of the
# RustSec advisory database kept on these machines (they cannot reach the database's home).
#
# Where the snapshot is: $PK_ADVISORY_DB when set; otherwise the first `shared/advisory-db` found
# beside the clone or one of its parents (a worktree under /work/wt/NAME, /work/main, or CI's
# clone anywhere under /work), then /work/shared/advisory-db. It is deliberately not copied into
# the repository: it is third-party data refreshed in one place, out of band, and 8 MB of it in
# every clone's history would freeze one date. A missing snapshot is a failure, never a skip.
#
# cargo-deny reads a database only from a git checkout under `db-path` (deny.toml) named after the
# database's URL, and judges its age by the checkout's fetch time. The snapshot is plain files, so
# a throw-away checkout is made here, dated the snapshot's own date (SNAPSHOT.md), not today: the
# staleness bound in deny.toml (`maximum-db-staleness`) then measures the snapshot's real age.
#
# Usage: tests/advisories.sh [extra cargo-deny check arguments]
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)
cd "$root"

die() { printf 'advisories: error: %s\n' "$*" >&2; exit 1; }

find_snapshot() {
  if [[ -n ${PK_ADVISORY_DB:-} ]]; then
    [[ -f $PK_ADVISORY_DB/SNAPSHOT.md && -d $PK_ADVISORY_DB/crates ]] ||
      die "PK_ADVISORY_DB=$PK_ADVISORY_DB holds no advisory snapshot (SNAPSHOT.md and crates/)"
    printf '%s\n' "$PK_ADVISORY_DB"
    return
  fi
  local d=$root tried=()
  while :; do
    tried+=("$d/shared/advisory-db" "$d/../shared/advisory-db")
    for c in "$d/shared/advisory-db" "$d/../shared/advisory-db"; do
      if [[ -f $c/SNAPSHOT.md && -d $c/crates ]]; then
        (cd "$c" && pwd -P)
        return
      fi
    done
    [[ $d == / ]] && break
    d=$(dirname "$d")
  done
  if [[ -f /work/shared/advisory-db/SNAPSHOT.md ]]; then
    printf '%s\n' /work/shared/advisory-db
    return
  fi
  die "no RustSec advisory snapshot found (looked for shared/advisory-db beside $root and its \
parents, and /work/shared/advisory-db); set PK_ADVISORY_DB to a directory holding SNAPSHOT.md \
and crates/"
}

snapshot=$(find_snapshot)
date=$(grep -oE '\([0-9]{4}-[0-9]{2}-[0-9]{2}\)' "$snapshot/SNAPSHOT.md" | head -n1 | tr -d '()') ||
  true
[[ -n $date ]] || die "$snapshot/SNAPSHOT.md names no date (YYYY-MM-DD in parentheses)"
commit=$(grep -oE '[0-9a-f]{40}' "$snapshot/SNAPSHOT.md" | head -n1 || true)

# The checkout's directory name: cargo-deny's `url_to_db_path` (the URL's last path segment, a
# dash, and the XxHash64 of the lowercased URL with seed 0xca80de71, as 16 hex digits).
url=https://github.com/rustsec/advisory-db
name=$(python3 - "$url" <<'PY'
import sys
M = (1 << 64) - 1
P1, P2, P3, P4, P5 = (0x9E3779B185EBCA87, 0xC2B2AE3D27D4EB4F, 0x165667B19E3779F9,
                      0x85EBCA77C2B2AE63, 0x27D4EB2F165667C5)
rotl = lambda x, r: ((x << r) | (x >> (64 - r))) & M
def rnd(acc, lane):
    return (rotl((acc + lane * P2) & M, 31) * P1) & M
def merge(acc, v):
    return (((acc ^ rnd(0, v)) * P1) + P4) & M
def xxh64(data, seed):
    n, i = len(data), 0
    if n >= 32:
        v = [(seed + P1 + P2) & M, (seed + P2) & M, seed, (seed - P1) & M]
        while i + 32 <= n:
            for k in range(4):
                v[k] = rnd(v[k], int.from_bytes(data[i + 8 * k:i + 8 * k + 8], 'little'))
            i += 32
        h = (rotl(v[0], 1) + rotl(v[1], 7) + rotl(v[2], 12) + rotl(v[3], 18)) & M
        for k in range(4):
            h = merge(h, v[k])
    else:
        h = (seed + P5) & M
    h = (h + n) & M
    while i + 8 <= n:
        h = ((rotl(h ^ rnd(0, int.from_bytes(data[i:i + 8], 'little')), 27) * P1) + P4) & M
        i += 8
    if i + 4 <= n:
        h = ((rotl(h ^ (int.from_bytes(data[i:i + 4], 'little') * P1) & M, 23) * P2) + P3) & M
        i += 4
    while i < n:
        h = (rotl(h ^ (data[i] * P5) & M, 11) * P1) & M
        i += 1
    h ^= h >> 33; h = (h * P2) & M; h ^= h >> 29; h = (h * P3) & M; h ^= h >> 32
    return h
url = sys.argv[1].lower()
print(f"{url.rstrip('/').rsplit('/', 1)[-1]}-{xxh64(url.encode(), 0xca80de71):016x}")
PY
)

dbs=$(mktemp -d "${TMPDIR:-/tmp}/pk-advisory-dbs.XXXXXX")
trap 'rm -rf "$dbs"' EXIT
db=$dbs/$name
mkdir -p "$db"
cp -R "$snapshot/crates" "$db/crates"
stamp="${date}T00:00:00Z"
(
  cd "$db"
  git init -q
  git add crates
  GIT_AUTHOR_DATE=$stamp GIT_COMMITTER_DATE=$stamp git -c user.name=pullkeeper-tests \
    -c user.email=tests@pullkeeper.invalid -c commit.gpgsign=false commit -q \
    -m "RustSec advisory database snapshot ${commit:-of unknown commit} ($date)"
  # cargo-deny dates the checkout by FETCH_HEAD's (else HEAD's) modification time.
  touch -d "$stamp" .git/HEAD
  : >.git/FETCH_HEAD
  touch -d "$stamp" .git/FETCH_HEAD
)
count=$(find "$db/crates" -name 'RUSTSEC-*.md' | wc -l)
printf 'advisories: RustSec snapshot of %s (%s advisories) from %s\n' "$date" "$count" "$snapshot" >&2
PK_ADVISORY_DBS=$dbs cargo deny --offline check advisories "$@"
