#!/usr/bin/env bash
# bench/run.sh: the fan-out benchmark (issue 3 item 10). Prints figures; asserts nothing about time.
#
# On a real control plane of its own (tests/cluster/up in a temp dir, stopped on exit) with N target
# namespaces (default 1000), it measures for each write rate in PK_BENCH_RATES (default "50 0";
# 0 = unlimited):
#   - time from starting `pullkeeper run` until every Secret exists and every `default`
#     ServiceAccount references it (polled from the API server every PK_BENCH_POLL seconds);
#   - write requests on secrets and serviceaccounts, counted from the API server's own /metrics
#     (apiserver_request_total, verbs POST/PUT/PATCH/DELETE/APPLY, every response code, no
#     subresources), and pullkeeper's own pullkeeper_writes_total for comparison;
#   - the daemon's peak RSS (VmHWM from /proc/PID/status just before it is stopped);
#   - writes of a second pass with nothing changed, twice: `pullkeeper once` (same instance, fresh
#     caches, one full pass) and a restarted `pullkeeper run` left PK_BENCH_SETTLE seconds after it
#     is ready. Both must be 0; the script prints what it saw and does not fail on it.
#
# Every rate gets its own instance name and Secret name, so each run starts from namespaces
# without its Secret (the earlier run's Secret and SA entry stay, owned by another instance).
# The daemon runs with a token of its own ServiceAccount, bound by deploy/kustomize/base/rbac.yaml.
#
# Env: PK_BENCH_NAMESPACES (1000), PK_BENCH_RATES ("50 0"), PK_BENCH_CONCURRENCY (8, the daemon's
# default), PK_BENCH_POLL (1 s), PK_BENCH_TIMEOUT (900 s per wait), PK_BENCH_SETTLE (20 s),
# PK_BENCH_STALL (60 s: a first pass whose counts stop moving for this long once the daemon is
# ready is reported as "never (M/N)" with the namespaces left out, and the run goes on),
# PK_BENCH_BIN (a prebuilt binary instead of `cargo build --release`),
# PK_BENCH_DIR (scratch dir; default a new /tmp/pullkeeper-bench.XXXXXX), PK_BENCH_KEEP=1 keeps it.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)
cd "$root"

N=${PK_BENCH_NAMESPACES:-1000}
RATES=${PK_BENCH_RATES:-"50 0"}
CONCURRENCY=${PK_BENCH_CONCURRENCY:-8}
POLL=${PK_BENCH_POLL:-1}
TIMEOUT=${PK_BENCH_TIMEOUT:-900}
SETTLE=${PK_BENCH_SETTLE:-20}
STALL=${PK_BENCH_STALL:-60}
PREFIX=pkb
LABEL=pullkeeper.dev/bench
[[ $N =~ ^[0-9]+$ && $N -ge 1 ]] || { echo "PK_BENCH_NAMESPACES must be a positive integer" >&2; exit 2; }
for tool in curl jq python3 kubectl cargo; do
  command -v "$tool" >/dev/null || { echo "bench: $tool is required" >&2; exit 2; }
done

log() { printf '[bench %s] %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; }
now() { date +%s.%N; }
elapsed() { python3 -c "import sys; print(f'{float(sys.argv[2]) - float(sys.argv[1]):.1f}')" "$1" "$2"; }

# --- build ---------------------------------------------------------------------------------------
if [[ -n ${PK_BENCH_BIN:-} ]]; then
  bin=$PK_BENCH_BIN
  log "using the prebuilt $bin (PK_BENCH_BIN)"
else
  log "cargo build --release"
  cargo build --release --locked --bin pullkeeper >&2
  bin=$root/target/release/pullkeeper
fi
pk_version=$("$bin" --version)

# --- control plane -------------------------------------------------------------------------------
dir=${PK_BENCH_DIR:-$(mktemp -d /tmp/pullkeeper-bench.XXXXXX)}
mkdir -p "$dir"
daemon_pid=
cleanup() {
  local rc=$?
  if [[ -n $daemon_pid ]] && kill -0 "$daemon_pid" 2>/dev/null; then
    kill "$daemon_pid" 2>/dev/null || true
    wait "$daemon_pid" 2>/dev/null || true
  fi
  "$root/tests/cluster/down" "$dir" >&2 || true
  if [[ ${PK_BENCH_KEEP:-0} != 1 && -z ${PK_BENCH_DIR:-} && $rc -eq 0 ]]; then
    rm -rf "$dir"
  else
    log "scratch dir kept: $dir"
  fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM
trap 'log "failed (exit $?) at line $LINENO: $BASH_COMMAND"' ERR

log "starting the control plane in $dir"
# No node: the benchmark measures the daemon against the API server only.
PK_NO_NODE=1 "$root/tests/cluster/up" "$dir" >&2
# shellcheck disable=SC1091
. "$dir/env"
admin_token=$(cat "$PK_KUBE_ADMIN_TOKEN_FILE")
api() { curl -fsS --max-time 60 --cacert "$PK_KUBE_CA_FILE" -H "Authorization: Bearer $admin_token" "$PK_KUBE_SERVER$1"; }

# Bounded wait: wait_for SECONDS DESCRIPTION COMMAND... (COMMAND succeeds when done).
wait_for() {
  local limit=$1 what=$2; shift 2
  local start=$SECONDS
  until "$@"; do
    if (( SECONDS - start >= limit )); then
      log "timed out after ${limit}s waiting for: $what"
      return 1
    fi
    sleep "$POLL"
  done
}

# --- the daemon's identity: its ServiceAccount, RBAC from the shipped manifest, a token ----------
kubectl create namespace pullkeeper >/dev/null
kubectl apply -f deploy/kustomize/base/rbac.yaml >/dev/null
can_write() {
  [[ $(kubectl auth can-i patch secrets -A --as=system:serviceaccount:pullkeeper:pullkeeper 2>/dev/null) == yes &&
     $(kubectl auth can-i patch serviceaccounts -A --as=system:serviceaccount:pullkeeper:pullkeeper 2>/dev/null) == yes ]]
}
wait_for 60 "RBAC for pullkeeper to take effect" can_write
sa_token=$(kubectl create token pullkeeper -n pullkeeper --duration=6h)
ca_data=$(base64 -w0 <"$PK_KUBE_CA_FILE")
umask 077
cat >"$dir/pullkeeper.kubeconfig" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: bench
  cluster: {server: $PK_KUBE_SERVER, certificate-authority-data: $ca_data}
users:
- name: pullkeeper
  user: {token: $sa_token}
contexts:
- name: bench
  context: {cluster: bench, user: pullkeeper}
current-context: bench
EOF
umask 022

# --- N target namespaces -------------------------------------------------------------------------
log "creating $N namespaces labelled $LABEL=true"
t_ns=$(now)
mkdir -p "$dir/ns"
python3 - "$dir/ns" "$N" "$PREFIX" "$LABEL" <<'EOF'
import sys
out, n, prefix, label = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
chunks = 4
docs = [[] for _ in range(chunks)]
for i in range(1, n + 1):
    docs[i % chunks].append(
        f"apiVersion: v1\nkind: Namespace\nmetadata:\n  name: {prefix}-{i:05d}\n"
        f"  labels:\n    {label}: \"true\"\n")
for c in range(chunks):
    with open(f"{out}/ns-{c}.yaml", "w") as f:
        f.write("---\n".join(docs[c]))
EOF
pids=()
for f in "$dir"/ns/ns-*.yaml; do
  [[ -s $f ]] || continue
  kubectl create -f "$f" >/dev/null &
  pids+=($!)
done
for p in "${pids[@]}"; do wait "$p"; done
count_default_sas() {
  api "/api/v1/serviceaccounts?fieldSelector=metadata.name%3Ddefault" |
    jq --arg p "$PREFIX-" '[.items[] | select(.metadata.namespace | startswith($p))] | length'
}
all_default_sas() { [[ $(count_default_sas) -eq $N ]]; }
wait_for "$TIMEOUT" "a default ServiceAccount in each of the $N namespaces" all_default_sas
log "$N namespaces with their default ServiceAccount in $(elapsed "$t_ns" "$(now)") s"

# --- measuring helpers ---------------------------------------------------------------------------
# Sum of write requests on secrets and serviceaccounts (no subresources) in the API server's
# /metrics; also writes a "resource verb code count" breakdown to $2 when given.
write_count() {
  api /metrics | python3 -c '
import re, sys
writes = {"POST", "PUT", "PATCH", "DELETE", "DELETECOLLECTION", "APPLY", "UPDATE", "CREATE"}
total, parts = 0, {}
for line in sys.stdin:
    if not line.startswith("apiserver_request_total{"):
        continue
    labels = dict(re.findall(r"(\w+)=\"([^\"]*)\"", line[: line.rindex("}")]))
    if labels.get("resource") not in ("secrets", "serviceaccounts") or labels.get("subresource"):
        continue
    if labels.get("group", "") != "" or labels.get("verb") not in writes:
        continue
    value = int(float(line.rsplit(" ", 1)[1]))
    total += value
    key = (labels["resource"], labels["verb"], labels.get("code", "?"))
    parts[key] = parts.get(key, 0) + value
print(total)
if len(sys.argv) > 1:
    with open(sys.argv[1], "w") as f:
        for (r, v, c), n in sorted(parts.items()):
            f.write(f"{r} {v} {c} {n}\n")
' "$@"
}
# Breakdown of the difference between two breakdown files.
breakdown_delta() {
  python3 - "$1" "$2" <<'EOF'
import sys
def load(p):
    d = {}
    for line in open(p):
        r, v, c, n = line.split()
        d[(r, v, c)] = int(n)
    return d
a, b = load(sys.argv[1]), load(sys.argv[2])
out = [f"{r}/{v}/{c}={b[k] - a.get(k, 0)}" for k in sorted(b) for (r, v, c) in [k] if b[k] - a.get(k, 0)]
print(", ".join(out) if out else "none")
EOF
}
# pullkeeper_writes_total summed (and by kind/operation/outcome) from the daemon's /metrics.
pk_writes() {
  curl -fsS --max-time 10 "http://$admin_addr/metrics" | python3 -c '
import re, sys
total, parts = 0, []
for line in sys.stdin:
    if line.startswith("pullkeeper_writes_total{"):
        labels = dict(re.findall(r"(\w+)=\"([^\"]*)\"", line))
        n = int(float(line.rsplit(" ", 1)[1]))
        total += n
        k, o, r = labels.get("kind"), labels.get("operation"), labels.get("outcome")
        parts.append(f"{k}/{o}/{r}={n}")
print(total, " ".join(parts) or "none")
'
}
count_secrets() {
  api "/api/v1/secrets?labelSelector=pullkeeper.dev%2Finstance%3D$1,pullkeeper.dev%2Fregistry%3D$2" |
    jq --arg p "$PREFIX-" --arg s "$3" '[.items[] | select(.metadata.namespace | startswith($p)) | select(.metadata.name == $s)] | length'
}
count_referencing_sas() {
  api "/api/v1/serviceaccounts?fieldSelector=metadata.name%3Ddefault" |
    jq --arg p "$PREFIX-" --arg s "$1" '[.items[] | select(.metadata.namespace | startswith($p))
      | select([.imagePullSecrets[]?.name] | index($s))] | length'
}
free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
kib_to_mib() { python3 -c "import sys; print(f'{int(sys.argv[1]) / 1024:.1f}')" "$1"; }
vm_field() { awk -v f="$2:" '$1 == f {print $2}' "/proc/$1/status"; }
ready() { curl -fsS --max-time 5 -o /dev/null "http://$admin_addr/readyz" 2>/dev/null; }

start_daemon() { # INSTANCE RATE CONFIG LOGFILE
  admin_addr=127.0.0.1:$(free_port)
  PK_BENCH_PASSWORD=bench-password "$bin" --log-format json run --config "$3" \
    --kubeconfig "$dir/pullkeeper.kubeconfig" --admin-addr "$admin_addr" --instance "$1" \
    --writes-per-second "$2" --concurrency "$CONCURRENCY" >"$4" 2>&1 &
  daemon_pid=$!
}
stop_daemon() {
  kill "$daemon_pid" 2>/dev/null || true
  local waited=0
  while kill -0 "$daemon_pid" 2>/dev/null && (( waited < 30 )); do sleep 1; waited=$((waited + 1)); done
  kill -9 "$daemon_pid" 2>/dev/null || true
  wait "$daemon_pid" 2>/dev/null || true
  daemon_pid=
}

results=()
for rate in $RATES; do
  [[ $rate =~ ^[0-9]+(\.[0-9]+)?$ ]] || { log "skipping bad rate $rate"; continue; }
  tag=$( [[ $rate == 0 ]] && echo unlimited || echo "r${rate//./-}")
  instance=bench-$tag registry=bench-$tag secret=bench-pull-$tag
  cfg=$dir/config-$tag
  mkdir -p "$cfg"
  cat >"$cfg/$registry.yaml" <<EOF
provider:
  type: static
  username: {value: robot}
  password: {env: PK_BENCH_PASSWORD}
servers: ["registry.bench.test"]
secretName: $secret
namespaces:
  selector: "$LABEL=true"
EOF
  PK_BENCH_PASSWORD=x "$bin" check --config "$cfg" >&2

  # --- first pass: from nothing to every Secret and SA reference in place ---------------------
  log "rate $rate: starting pullkeeper run (instance $instance)"
  w0=$(write_count "$dir/w0-$tag")
  t0=$(now)
  start_daemon "$instance" "$rate" "$cfg" "$dir/daemon-$tag.log"
  t_ready= t_secrets= t_sas=
  deadline=$((SECONDS + TIMEOUT))
  secrets=0 sas=0 progress= last_progress=$SECONDS stalled=
  while (( SECONDS < deadline )); do
    kill -0 "$daemon_pid" 2>/dev/null || { log "the daemon exited; see $dir/daemon-$tag.log"; tail -20 "$dir/daemon-$tag.log" >&2; exit 1; }
    [[ -z $t_ready ]] && ready && t_ready=$(now)
    if [[ -z $t_secrets ]]; then
      secrets=$(count_secrets "$instance" "$registry" "$secret")
      [[ $secrets -eq $N ]] && t_secrets=$(now)
    fi
    if [[ -z $t_sas ]]; then
      sas=$(count_referencing_sas "$secret")
      [[ $sas -eq $N ]] && t_sas=$(now)
    fi
    [[ -n $t_secrets && -n $t_sas ]] && break
    if [[ $progress != "$secrets/$sas" ]]; then
      progress=$secrets/$sas last_progress=$SECONDS
    elif [[ -n $t_ready ]] && (( SECONDS - last_progress >= STALL )); then
      stalled=1
      break
    fi
    sleep "$POLL"
  done
  t_done=$(now)
  incomplete=
  if [[ -z $t_secrets || -z $t_sas ]]; then
    why=$( [[ -n $stalled ]] && echo "no progress for ${STALL}s" || echo "timed out after ${TIMEOUT}s")
    log "rate $rate: NOT DONE ($why): Secrets $secrets/$N, ServiceAccounts referencing it $sas/$N; measuring anyway"
    incomplete="never ($secrets/$N)"
    [[ -z $t_secrets ]] || incomplete=
    incomplete_sas="never ($sas/$N)"
    [[ -z $t_sas ]] || incomplete_sas=
    api "/api/v1/serviceaccounts?fieldSelector=metadata.name%3Ddefault" |
      jq -r --arg p "$PREFIX-" --arg s "$secret" '.items[] | select(.metadata.namespace | startswith($p))
        | select([.imagePullSecrets[]?.name] | index($s) | not) | .metadata.namespace' >"$dir/missing-sas-$tag"
  fi
  w1=$(write_count "$dir/w1-$tag")
  pk1=$(pk_writes)
  [[ -n $t_secrets && -n $t_sas ]] && log "rate $rate: all in place after $(elapsed "$t0" "$t_done") s; settling ${SETTLE}s"
  sleep "$SETTLE"
  w2=$(write_count "$dir/w2-$tag")
  pk2=$(pk_writes)
  hwm=$(vm_field "$daemon_pid" VmHWM) rss=$(vm_field "$daemon_pid" VmRSS)
  stop_daemon
  last_write=$(jq -r 'select(.message == "secret applied" or .message == "serviceaccount imagePullSecrets updated") | .timestamp' \
    "$dir/daemon-$tag.log" 2>/dev/null | sort | tail -1)
  first_log=$(jq -r '.timestamp' "$dir/daemon-$tag.log" 2>/dev/null | sort | awk 'NR == 1')

  # --- second pass A: `pullkeeper once`, same instance, nothing changed -----------------------
  log "rate $rate: second pass with pullkeeper once"
  w3=$(write_count "$dir/w3-$tag")
  t_once=$(now)
  once_rc=0
  PK_BENCH_PASSWORD=bench-password /usr/bin/time -v -o "$dir/once-$tag.time" "$bin" --log-format json once \
    --config "$cfg" --kubeconfig "$dir/pullkeeper.kubeconfig" --instance "$instance" \
    --writes-per-second "$rate" >"$dir/once-$tag.log" 2>&1 || once_rc=$?
  once_s=$(elapsed "$t_once" "$(now)")
  once_hwm=$(awk -F': ' '/Maximum resident set size/ {print $2}' "$dir/once-$tag.time")
  w4=$(write_count "$dir/w4-$tag")

  # --- second pass B: restart `pullkeeper run` (fresh caches, full resync) ---------------------
  log "rate $rate: second pass by restarting pullkeeper run"
  w5=$(write_count "$dir/w5-$tag")
  start_daemon "$instance" "$rate" "$cfg" "$dir/daemon-$tag-restart.log"
  t_restart=$(now)
  wait_for 120 "the restarted daemon to be ready" ready
  restart_ready=$(elapsed "$t_restart" "$(now)")
  sleep "$SETTLE"
  w6=$(write_count "$dir/w6-$tag")
  pk6=$(pk_writes)
  restart_hwm=$(vm_field "$daemon_pid" VmHWM)
  stop_daemon

  results+=("$(jq -n \
    --arg rate "$( [[ $rate == 0 ]] && echo unlimited || echo "$rate/s")" \
    --arg ready "$( [[ -n $t_ready ]] && elapsed "$t0" "$t_ready" || echo '?')" \
    --arg secrets "$( [[ -n $t_secrets ]] && elapsed "$t0" "$t_secrets" || echo "${incomplete:-?}")" \
    --arg sas "$( [[ -n $t_sas ]] && elapsed "$t0" "$t_sas" || echo "${incomplete_sas:-?}")" \
    --arg missing "$( [[ -s $dir/missing-sas-$tag ]] && tr '\n' ' ' <"$dir/missing-sas-$tag" || echo none)" \
    --arg final_sas "$(count_referencing_sas "$secret")" \
    --arg logspan "$( [[ -n $last_write && -n $first_log ]] && python3 -c '
import sys; from datetime import datetime
p = lambda s: datetime.fromisoformat(s.replace("Z", "+00:00"))
print(f"{(p(sys.argv[2]) - p(sys.argv[1])).total_seconds():.1f}")' "$first_log" "$last_write" || echo '?')" \
    --arg w_done "$((w1 - w0))" --arg w_settled "$((w2 - w0))" \
    --arg w_detail "$(breakdown_delta "$dir/w0-$tag" "$dir/w2-$tag")" \
    --arg pk "${pk2%% *}" --arg pk_detail "${pk2#* }" \
    --arg hwm "$(kib_to_mib "$hwm")" --arg rss "$(kib_to_mib "$rss")" \
    --arg once_w "$((w4 - w3))" --arg once_detail "$(breakdown_delta "$dir/w3-$tag" "$dir/w4-$tag")" \
    --arg once_rc "$once_rc" --arg once_s "$once_s" --arg once_hwm "$(kib_to_mib "${once_hwm:-0}")" \
    --arg restart_w "$((w6 - w5))" --arg restart_detail "$(breakdown_delta "$dir/w5-$tag" "$dir/w6-$tag")" \
    --arg restart_pk "${pk6%% *}" --arg restart_ready "$restart_ready" --arg restart_hwm "$(kib_to_mib "$restart_hwm")" \
    '$ARGS.named')")
done

# --- figures ------------------------------------------------------------------------------------
echo
echo "pullkeeper fan-out benchmark: $N namespaces, 1 registry (static), concurrency $CONCURRENCY"
commit=$(git -C "$root" rev-parse --short HEAD 2>/dev/null || echo unknown)
git -C "$root" diff --quiet HEAD -- src Cargo.toml Cargo.lock 2>/dev/null || commit="$commit+local changes"
echo "$pk_version (commit $commit); control plane $PK_KUBE_VERSION (tests/cluster); $(nproc) cores; $(date -u +%Y-%m-%dT%H:%MZ)"
echo "daemon identity: its own ServiceAccount token (deploy/kustomize/base/rbac.yaml); poll every ${POLL}s"
echo
row() { printf '%-58s' "$1"; shift; for v in "$@"; do printf ' %18s' "$v"; done; printf '\n'; }
field() { for r in "${results[@]}"; do jq -r ".$1" <<<"$r"; done; }
mapfile -t hdr < <(field rate)
row "write rate (--writes-per-second)" "${hdr[@]}"
row "---" "${hdr[@]//*/---}"
mapfile -t v < <(field ready);      row "ready (/readyz) after start, s" "${v[@]}"
mapfile -t v < <(field secrets);    row "all $N Secrets present after start, s" "${v[@]}"
mapfile -t v < <(field sas);        row "all $N default SAs reference it after start, s" "${v[@]}"
mapfile -t v < <(field logspan);    row "first log line to last write (daemon log), s" "${v[@]}"
mapfile -t v < <(field w_done);     row "API server writes (secrets+SAs) until all in place" "${v[@]}"
mapfile -t v < <(field w_settled);  row "API server writes incl. ${SETTLE}s settle" "${v[@]}"
mapfile -t v < <(field pk);         row "pullkeeper_writes_total (same window)" "${v[@]}"
mapfile -t v < <(field hwm);        row "daemon peak RSS (VmHWM), MiB" "${v[@]}"
mapfile -t v < <(field rss);        row "daemon RSS at the end, MiB" "${v[@]}"
mapfile -t v < <(field once_w);     row "2nd pass 'once': API server writes (must be 0)" "${v[@]}"
mapfile -t v < <(field once_s);     row "2nd pass 'once': wall time, s" "${v[@]}"
mapfile -t v < <(field once_rc);    row "2nd pass 'once': exit code" "${v[@]}"
mapfile -t v < <(field once_hwm);   row "2nd pass 'once': peak RSS, MiB" "${v[@]}"
mapfile -t v < <(field restart_w);  row "2nd pass restart: API server writes (must be 0)" "${v[@]}"
mapfile -t v < <(field restart_pk); row "2nd pass restart: pullkeeper_writes_total" "${v[@]}"
mapfile -t v < <(field restart_ready); row "2nd pass restart: ready after, s" "${v[@]}"
mapfile -t v < <(field restart_hwm); row "2nd pass restart: peak RSS after ${SETTLE}s, MiB" "${v[@]}"
mapfile -t v < <(field final_sas);  row "default SAs referencing it at the very end (of $N)" "${v[@]}"
echo
for r in "${results[@]}"; do
  jq -r '"\(.rate): first pass left these default SAs without the reference: \(.missing)\n\(.rate): API server writes by resource/verb/code: \(.w_detail)\n\(.rate): pullkeeper_writes_total: \(.pk_detail)\n\(.rate): second pass once: \(.once_detail); restart: \(.restart_detail)"' <<<"$r"
done
