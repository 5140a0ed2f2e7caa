#!/usr/bin/env bash
# bench/run.sh (`make bench`): the fan-out benchmark (issue 3 item 10, grown by issue 19 item 4).
# Prints figures; asserts nothing about time. bench/README.md explains every figure.
#
# On a control plane of its own (PK_NO_NODE=1 tests/cluster/up in a scratch dir, always stopped on
# exit), for each size N in PK_BENCH_NAMESPACES (ascending; the namespaces of a smaller size are
# reused and only the missing ones created), for each concurrency C in PK_BENCH_CONCURRENCY:
#   - the raw writer (bench/pkbench, client-go): one POST per Secret and one guarded JSON patch
#     per `default` ServiceAccount, C at once, no cache, under its own ServiceAccount bound to the
#     same ClusterRoles as pullkeeper's;
#   - pullkeeper's first pass (`pullkeeper run --concurrency C --writes-per-second R` for each R in
#     PK_BENCH_RATES): time from start until every Secret exists and every `default` ServiceAccount
#     references it (timed from a watch by bench/pkbench, the same observer as the raw writer's),
#     API-server write requests (apiserver_request_total, by resource/verb/code) until then and
#     after PK_BENCH_SETTLE s, pullkeeper_writes_total, peak RSS (VmHWM), CPU seconds of the pass
#     (utime+stime of /proc/PID/stat), CPU seconds over PK_BENCH_IDLE s of idleness, and the time
#     and CPU of the next full resync sweep (pullkeeper_sweep_duration_seconds; the daemon runs
#     with --resync-interval SETTLE+IDLE+30 s so that the sweep comes after the idle window);
#   - the no-op second pass twice: `pullkeeper once` (wall time, CPU, writes, peak RSS) and a
#     restarted `pullkeeper run` left PK_BENCH_SETTLE s after /readyz (writes);
#   - requests of each writer executing and waiting in the API server's priority-and-fairness
#     queues, sampled every PK_BENCH_APF_INTERVAL from /debug/api_priority_and_fairness/dump_requests;
# then, per size, with the last daemon still running and every namespace in place:
#   - new-namespace latency: PK_BENCH_LATENCY_COUNT namespaces created PK_BENCH_LATENCY_INTERVAL
#     apart; per namespace the time from the watch's ADDED event of its `default` ServiceAccount to
#     the event that carries the reference (p50/p99/max);
#   - a rotation wave: the static provider's password file replaced (the registry re-reads it every
#     ~10 s: refresh.defaultLifetime 15s); time from the first to the last Secret with new data
#     (watch), and the write requests it took (must equal the namespaces);
#   - a second wave with PK_BENCH_LATENCY_COUNT namespaces created PK_BENCH_WAVE_INTERVAL apart from
#     its first rotated Secret on: their latency during a wave.
# At the end: a markdown table ($dir/figures.md, printed) and a plot (PK_BENCH_PLOT, default
# bench/curve.png; matplotlib is installed with pip if missing; PK_BENCH_PLOT= skips it).
#
# Every pullkeeper run has its own --instance and Secret name; the target ServiceAccounts are reset
# (imagePullSecrets and annotations removed) before every first pass, raw or pullkeeper's, so all
# start from the same state. pullkeeper runs with a token of its own ServiceAccount, bound by
# deploy/kustomize/base/rbac.yaml plus a ClusterRole granting get/list/watch/patch/delete on exactly
# the benchmark's Secret names (resourceNames), so the bench also works with a name-scoped role.
#
# Env: PK_BENCH_NAMESPACES ("1000"; a list such as "1000 3000 10000"), PK_BENCH_CONCURRENCY ("8 32"),
# PK_BENCH_RATES ("0" = unlimited; e.g. "50 0"), PK_BENCH_SETTLE (20 s), PK_BENCH_IDLE (60 s),
# PK_BENCH_STALL (60 s without progress ends a pass as "stalled"), PK_BENCH_TIMEOUT (900 s per
# wait), PK_BENCH_LATENCY_COUNT (50), PK_BENCH_LATENCY_INTERVAL (300ms), PK_BENCH_WAVE_INTERVAL
# (50ms), PK_BENCH_APF_INTERVAL (100ms), PK_BENCH_BIN (a prebuilt pullkeeper instead of
# `cargo build --release`), PK_BENCH_DIR (scratch dir; default a new /tmp/pullkeeper-bench.XXXXXX),
# PK_BENCH_KEEP=1 keeps it, PK_BENCH_PLOT (PNG path).
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)
cd "$root"

list() { tr ',' ' ' <<<"$1"; }
read -r -a SIZES <<<"$(list "${PK_BENCH_NAMESPACES:-1000}")"
read -r -a CONCS <<<"$(list "${PK_BENCH_CONCURRENCY:-8 32}")"
read -r -a RATES <<<"$(list "${PK_BENCH_RATES:-0}")"
TIMEOUT=${PK_BENCH_TIMEOUT:-900}
SETTLE=${PK_BENCH_SETTLE:-20}
IDLE=${PK_BENCH_IDLE:-60}
STALL=${PK_BENCH_STALL:-60}
LAT_COUNT=${PK_BENCH_LATENCY_COUNT:-50}
LAT_INTERVAL=${PK_BENCH_LATENCY_INTERVAL:-300ms}
WAVE_INTERVAL=${PK_BENCH_WAVE_INTERVAL:-50ms}
APF_INTERVAL=${PK_BENCH_APF_INTERVAL:-100ms}
PLOT=${PK_BENCH_PLOT-$root/bench/curve.png}
RESYNC=$((SETTLE + IDLE + 30))
PREFIX=pkb
LABEL=pullkeeper.dev/bench
EXTRA=pullkeeper.dev/bench-extra
PK_USER=system:serviceaccount:pullkeeper:pullkeeper
RAW_USER=system:serviceaccount:pullkeeper:pullkeeper-bench-raw
prev=0
for n in "${SIZES[@]}"; do
  [[ $n =~ ^[0-9]+$ && $n -ge 1 && $n -gt $prev ]] ||
    { echo "PK_BENCH_NAMESPACES must be ascending positive integers" >&2; exit 2; }
  prev=$n
done
for c in "${CONCS[@]}"; do [[ $c =~ ^[0-9]+$ && $c -ge 1 ]] || { echo "bad concurrency $c" >&2; exit 2; }; done
for r in "${RATES[@]}"; do [[ $r =~ ^[0-9]+(\.[0-9]+)?$ ]] || { echo "bad rate $r" >&2; exit 2; }; done
for tool in curl jq python3 kubectl cargo go; do
  command -v "$tool" >/dev/null || { echo "bench: $tool is required" >&2; exit 2; }
done

log() { printf '[bench %s] %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; }
now() { date +%s.%N; }
elapsed() { python3 -c "import sys; print(f'{float(sys.argv[2]) - float(sys.argv[1]):.2f}')" "$1" "$2"; }
# Seconds from T0 to T (unix seconds), or "never" when T is 0 (the watch never saw it).
since() { if [[ ${2:-0} == 0 ]]; then echo never; else elapsed "$1" "$2"; fi; }
t_script=$(now)

# --- build ---------------------------------------------------------------------------------------
if [[ -n ${PK_BENCH_BIN:-} ]]; then
  bin=$PK_BENCH_BIN
  log "using the prebuilt $bin (PK_BENCH_BIN)"
else
  log "cargo build --release"
  cargo build --release --locked --bin pullkeeper >&2
  bin=${CARGO_TARGET_DIR:-$root/target}/release/pullkeeper
fi
pk_version=$("$bin" --version)

dir=${PK_BENCH_DIR:-$(mktemp -d /tmp/pullkeeper-bench.XXXXXX)}
mkdir -p "$dir"
log "building bench/pkbench (client-go, the k8s.io versions of tests/cluster/go.mod)"
(cd "$root/bench/pkbench" && CGO_ENABLED=0 GOTOOLCHAIN=local GOFLAGS=-mod=readonly \
  go build -trimpath -o "$dir/pkbench" .) >&2
pkbench=$dir/pkbench

# --- control plane -------------------------------------------------------------------------------
daemon_pid= apf_pid= bg_pids=()
cleanup() {
  local rc=$?
  for p in $daemon_pid $apf_pid "${bg_pids[@]}"; do
    kill "$p" 2>/dev/null || true
    wait "$p" 2>/dev/null || true
  done
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
    sleep 1
  done
}

# --- names of every run, known up front (the Secret names go into the RBAC's resourceNames) -----
rate_tag() { if [[ $1 == 0 ]]; then echo u; else echo "r${1//./-}"; fi; }
pk_secret() { echo "bench-pk-n$1-c$2-$(rate_tag "$3")"; }     # N C RATE
pk_instance() { echo "pkb-n$1-c$2-$(rate_tag "$3")"; }
raw_secret() { echo "bench-raw-n$1-c$2"; }                     # N C
raw_instance() { echo "raw-n$1-c$2"; }
TEMPLATE_SECRET=bench-template
secret_names=("$TEMPLATE_SECRET")
for n in "${SIZES[@]}"; do
  for c in "${CONCS[@]}"; do
    secret_names+=("$(raw_secret "$n" "$c")")
    for r in "${RATES[@]}"; do secret_names+=("$(pk_secret "$n" "$c" "$r")"); done
  done
done

# --- identities: pullkeeper's ServiceAccount (shipped RBAC) and the raw writer's (same roles) ------
kubectl create namespace pullkeeper >/dev/null
kubectl apply -f deploy/kustomize/base/rbac.yaml >/dev/null
names_json=$(printf '%s\n' "${secret_names[@]}" | jq -R . | jq -sc .)
kubectl apply -f - >/dev/null <<EOF
apiVersion: v1
kind: ServiceAccount
metadata: {name: pullkeeper-bench-raw, namespace: pullkeeper}
---
# The benchmark's Secrets by name: harmless beside a broad role, required by one that grants
# get/list/watch/patch/delete on Secrets only for the names its config uses.
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata: {name: pullkeeper-bench-secrets}
rules:
  - apiGroups: [""]
    resources: ["secrets"]
    verbs: ["get", "list", "watch", "patch", "delete"]
    resourceNames: $names_json
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {name: pullkeeper-bench-secrets}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: pullkeeper-bench-secrets}
subjects:
  - {kind: ServiceAccount, name: pullkeeper, namespace: pullkeeper}
  - {kind: ServiceAccount, name: pullkeeper-bench-raw, namespace: pullkeeper}
---
# The raw writer holds exactly pullkeeper's ClusterRole: same rights, same priority level.
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {name: pullkeeper-bench-raw}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: pullkeeper}
subjects:
  - {kind: ServiceAccount, name: pullkeeper-bench-raw, namespace: pullkeeper}
EOF
can_write() {
  local who
  for who in pullkeeper pullkeeper-bench-raw; do
    [[ $(kubectl auth can-i create secrets -A --as="system:serviceaccount:pullkeeper:$who" 2>/dev/null) == yes &&
       $(kubectl auth can-i patch serviceaccounts -A --as="system:serviceaccount:pullkeeper:$who" 2>/dev/null) == yes &&
       $(kubectl auth can-i patch secrets/"$TEMPLATE_SECRET" -n default --as="system:serviceaccount:pullkeeper:$who" 2>/dev/null) == yes ]] || return 1
  done
}
wait_for 60 "RBAC for pullkeeper and the raw writer to take effect" can_write
ca_data=$(base64 -w0 <"$PK_KUBE_CA_FILE")
write_kubeconfig() { # SERVICEACCOUNT FILE
  local token
  token=$(kubectl create token "$1" -n pullkeeper --duration=12h)
  (umask 077; cat >"$2" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: bench
  cluster: {server: $PK_KUBE_SERVER, certificate-authority-data: $ca_data}
users:
- name: $1
  user: {token: $token}
contexts:
- name: bench
  context: {cluster: bench, user: $1}
current-context: bench
EOF
  )
}
write_kubeconfig pullkeeper "$dir/pullkeeper.kubeconfig"
write_kubeconfig pullkeeper-bench-raw "$dir/raw.kubeconfig"

# The static provider's password: a file the wave replaces (same length, so every Secret has the
# same size before and after).
(umask 077; python3 -c 'import secrets, string; print("".join(secrets.choice(string.ascii_letters + string.digits) for _ in range(24)), end="")' >"$dir/password")

# Requests in flight at the API server, sampled for the whole run.
"$pkbench" apf --kubeconfig "$KUBECONFIG" --users "$PK_USER,$RAW_USER" --interval "$APF_INTERVAL" \
  --out "$dir/apf.samples" 2>>"$dir/apf.log" &
apf_pid=$!

# --- measuring helpers ---------------------------------------------------------------------------
# Sum of write requests on secrets and serviceaccounts (no subresources) in the API server's
# /metrics; also writes a "resource verb code count" breakdown to $1 when given, which also holds
# the single-object reads (GET), so a look-up before each write would show.
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
    if labels.get("group", "") != "" or labels.get("verb") not in writes | {"GET"}:
        continue
    value = int(float(line.rsplit(" ", 1)[1]))
    if labels["verb"] != "GET":
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
# A sample of the daemon's /metrics: "writes breakdown", or one named value summed over labels.
pk_metrics() { curl -fsS --max-time 10 "http://$admin_addr/metrics"; }
pk_writes() {
  pk_metrics | python3 -c '
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
pk_value() { # METRIC: the sum of its samples (0 if absent)
  pk_metrics | awk -v m="$1" '$1 == m || index($1, m "{") == 1 {s += $2} END {printf "%.6f\n", s + 0}'
}
free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
kib_to_mib() { python3 -c "import sys; print(f'{int(sys.argv[1]) / 1024:.1f}')" "$1"; }
vm_field() { awk -v f="$2:" '$1 == f {print $2}' "/proc/$1/status"; }
ticks=$(getconf CLK_TCK)
cpu_of() { awk -v t="$ticks" '{sub(/^.*\) /, ""); printf "%.2f\n", ($12 + $13) / t}' "/proc/$1/stat"; }
sub() { python3 -c "import sys; print(f'{float(sys.argv[1]) - float(sys.argv[2]):.2f}')" "$1" "$2"; }
ready() { curl -fsS --max-time 5 -o /dev/null "http://$admin_addr/readyz" 2>/dev/null; }
# Most requests of USER executing and waiting at once in [FROM, TO] (unix seconds), and where.
apf_max() { # USER FROM TO
  awk -v u="$1" -v a="$2" -v b="$3" '$1 !~ /^#/ && $2 == u && $1 >= a && $1 <= b {
      if ($5 > e) e = $5; if ($6 > w) w = $6; pl = $3; fs = $4 }
    END {printf "%d %d %s %s\n", e, w, (pl == "" ? "-" : pl), (fs == "" ? "-" : fs)}' "$dir/apf.samples"
}
apf_samples() { awk -v a="$1" -v b="$2" '$1 !~ /^#/ && $1 >= a && $1 <= b {print $1}' "$dir/apf.samples" | sort -u | wc -l; }
record() { jq -nc "$@" '$ARGS.named' >>"$dir/results.jsonl"; }

# Starts the watch of a first pass in the background (its JSON goes to FILE).
start_pass_watch() { # SECRET-LABELS SECRET FILE
  rm -f "$dir/pass.ready"
  "$pkbench" pass --kubeconfig "$KUBECONFIG" --selector "$LABEL=true" --secret-labels "$1" --secret "$2" \
    --ready-file "$dir/pass.ready" --timeout "${TIMEOUT}s" --stall "${STALL}s" >"$3" 2>>"$dir/pass.log" &
  pass_pid=$!
  bg_pids+=("$pass_pid")
  wait_for 120 "the pass watch to sync" test -s "$dir/pass.ready"
}
pass_field() { jq -r ".$2" "$1"; }
reset_accounts() {
  local out
  out=$("$pkbench" reset --kubeconfig "$KUBECONFIG" --selector "$LABEL=true" 2>>"$dir/reset.log")
  log "reset: $(jq -c '{unchanged, patches, seconds}' <<<"$out")"
}

start_daemon() { # INSTANCE RATE CONCURRENCY CONFIG LOGFILE [EXTRA ARGS...]
  local instance=$1 rate=$2 conc=$3 cfg=$4 logfile=$5
  shift 5
  admin_addr=127.0.0.1:$(free_port)
  "$bin" --log-format json run --config "$cfg" \
    --kubeconfig "$dir/pullkeeper.kubeconfig" --admin-addr "$admin_addr" --instance "$instance" \
    --writes-per-second "$rate" --concurrency "$conc" "$@" >"$logfile" 2>&1 &
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
write_config() { # DIR SECRET SELECTOR
  mkdir -p "$1"
  cat >"$1/bench.yaml" <<EOF
provider:
  type: static
  username: {value: robot}
  password: {file: $dir/password}
servers: ["registry.bench.test"]
secretName: $2
namespaces:
  selector: "$3"
# The password file is re-read every ~10 s (2/3 of the lifetime), so a rotation starts soon.
refresh:
  defaultLifetime: 15s
  minInterval: 1s
EOF
  "$bin" check --config "$1" >&2
}

# --- the raw writer's Secret: what pullkeeper writes, taken from pullkeeper itself ---------------
kubectl create namespace "$PREFIX-template" >/dev/null
kubectl label namespace "$PREFIX-template" pullkeeper.dev/bench-template=true >/dev/null
write_config "$dir/config-template" "$TEMPLATE_SECRET" pullkeeper.dev/bench-template=true
"$bin" --log-format json once --config "$dir/config-template" --kubeconfig "$dir/pullkeeper.kubeconfig" \
  --instance bench-template >"$dir/once-template.log" 2>&1 ||
  { log "pullkeeper once for the template failed"; tail -5 "$dir/once-template.log" >&2; exit 1; }
kubectl get secret -n "$PREFIX-template" "$TEMPLATE_SECRET" -o json |
  jq '{apiVersion, kind, type, data, metadata: {labels: .metadata.labels, annotations: (.metadata.annotations // {})}}' \
  >"$dir/template.json"
log "template Secret: $(jq -c '{type, labels: .metadata.labels, annotations: (.metadata.annotations | keys), bytes: (.data | tostring | length)}' "$dir/template.json")"

# --- namespaces ----------------------------------------------------------------------------------
have=0
create_namespaces() { # FROM TO
  local from=$1 to=$2 f p
  rm -rf "$dir/ns" && mkdir -p "$dir/ns"
  python3 - "$dir/ns" "$from" "$to" "$PREFIX" "$LABEL" <<'EOF'
import sys
out, a, b, prefix, label = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], sys.argv[5]
chunks = 4
docs = [[] for _ in range(chunks)]
for i in range(a, b + 1):
    docs[i % chunks].append(
        f"apiVersion: v1\nkind: Namespace\nmetadata:\n  name: {prefix}-{i:05d}\n"
        f"  labels:\n    {label}: \"true\"\n")
for c in range(chunks):
    with open(f"{out}/ns-{c}.yaml", "w") as f:
        f.write("---\n".join(docs[c]))
EOF
  local pids=()
  for f in "$dir"/ns/ns-*.yaml; do
    [[ -s $f ]] || continue
    kubectl create -f "$f" >/dev/null &
    pids+=($!)
  done
  for p in "${pids[@]}"; do wait "$p"; done
}
count_default_sas() {
  api "/api/v1/serviceaccounts?fieldSelector=metadata.name%3Ddefault" |
    jq --arg p "$PREFIX-" '[.items[] | select(.metadata.namespace | startswith($p)) | select(.metadata.namespace != ($p + "template"))] | length'
}

# --- one pullkeeper run: first pass, settle, idle, resync sweep, `once`, restart ------------------
# Leaves the restarted daemon running when KEEP=1 (for the latency and wave measurements).
pk_run() { # N C RATE KEEP
  local n=$1 c=$2 rate=$3 keep=$4
  local instance secret tag cfg
  instance=$(pk_instance "$n" "$c" "$rate") secret=$(pk_secret "$n" "$c" "$rate") tag=n$n-c$c-$(rate_tag "$rate")
  cfg=$dir/config-$tag
  write_config "$cfg" "$secret" "$LABEL=true"
  reset_accounts
  log "N=$n C=$c rate=$rate: pullkeeper run (instance $instance)"
  local selector="app.kubernetes.io/managed-by=pullkeeper,pullkeeper.dev/instance=$instance"
  start_pass_watch "$selector" "$secret" "$dir/pass-$tag.json"
  local w0 w1 w2 pk1 pk2 t0 t_ready= t_done
  w0=$(write_count "$dir/w0-$tag")
  t0=$(now)
  start_daemon "$instance" "$rate" "$c" "$cfg" "$dir/daemon-$tag.log" --resync-interval "${RESYNC}s"
  while kill -0 "$pass_pid" 2>/dev/null; do
    if ! kill -0 "$daemon_pid" 2>/dev/null; then
      log "the daemon exited; see $dir/daemon-$tag.log"; tail -20 "$dir/daemon-$tag.log" >&2
      kill "$pass_pid" 2>/dev/null || true
      exit 1
    fi
    [[ -z $t_ready ]] && ready && t_ready=$(now)
    sleep 0.2
  done
  wait "$pass_pid" || true
  t_done=$(now)
  [[ -n $t_ready ]] || { wait_for 60 "the daemon to be ready" ready; t_ready=$(now); }
  local cpu_pass; cpu_pass=$(cpu_of "$daemon_pid")
  w1=$(write_count "$dir/w1-$tag")
  pk1=$(pk_writes)
  local pf=$dir/pass-$tag.json result pass_end
  result=$(pass_field "$pf" result)
  pass_end=$(jq -r '[.all_secrets, .all_references] | if min == 0 then 0 else max end' "$pf")
  [[ $pass_end != 0 ]] || pass_end=$t_done
  log "N=$n C=$c rate=$rate: first pass $result in $(elapsed "$t0" "$pass_end") s; settling ${SETTLE}s"
  sleep "$SETTLE"
  w2=$(write_count "$dir/w2-$tag")
  pk2=$(pk_writes)
  # Idle: CPU over IDLE seconds with nothing to do (the resync sweep comes after).
  local sweeps0 sweeps1 c0 c1 t_idle0 t_idle1
  sweeps0=$(pk_value pullkeeper_sweeps_total)
  c0=$(cpu_of "$daemon_pid") t_idle0=$(now)
  sleep "$IDLE"
  c1=$(cpu_of "$daemon_pid") t_idle1=$(now)
  sweeps1=$(pk_value pullkeeper_sweeps_total)
  local idle_note=""
  [[ $sweeps0 == "$sweeps1" ]] || idle_note="a sweep ran during the idle window"
  # The next resync sweep over every namespace, nothing to change.
  local n0 s0 n1 s1 sc0 sc1 w3 w4 sweep_s="?" sweep_cpu="?"
  n0=$(pk_value pullkeeper_sweep_duration_seconds_count) s0=$(pk_value pullkeeper_sweep_duration_seconds_sum)
  sc0=$(cpu_of "$daemon_pid")
  w3=$(write_count "$dir/w3-$tag")
  log "N=$n C=$c rate=$rate: idle CPU $(sub "$c1" "$c0") s in ${IDLE}s; waiting for the resync sweep (--resync-interval ${RESYNC}s)"
  more_sweeps() { [[ $(pk_value pullkeeper_sweep_duration_seconds_count) != "$n0" ]]; }
  local t_w0 t_w1; t_w0=$(now)
  if wait_for $((RESYNC + 120)) "a resync sweep" more_sweeps; then
    sc1=$(cpu_of "$daemon_pid") t_w1=$(now)
    n1=$(pk_value pullkeeper_sweep_duration_seconds_count) s1=$(pk_value pullkeeper_sweep_duration_seconds_sum)
    sweep_s=$(python3 -c "import sys; a, b, c, d = map(float, sys.argv[1:]); print(f'{(d - c) / (b - a):.3f}')" "$n0" "$n1" "$s0" "$s1")
    # CPU from the idle window's end to the sweep's end, less the idle rate over that wait.
    sweep_cpu=$(python3 -c "import sys; w, i, s, t = map(float, sys.argv[1:]); print(f'{max(0.0, w - i / s * t):.2f}')" \
      "$(sub "$sc1" "$sc0")" "$(sub "$c1" "$c0")" "$(elapsed "$t_idle0" "$t_idle1")" "$(elapsed "$t_w0" "$t_w1")")
  fi
  w4=$(write_count "$dir/w4-$tag")
  local hwm rss
  hwm=$(vm_field "$daemon_pid" VmHWM) rss=$(vm_field "$daemon_pid" VmRSS)
  stop_daemon
  local apf_pk; apf_pk=$(apf_max "$PK_USER" "$t0" "$pass_end")

  # Second pass A: `pullkeeper once`, same instance, nothing changed.
  log "N=$n C=$c rate=$rate: second pass with pullkeeper once"
  local w5 w6 t_once once_rc=0 once_s
  w5=$(write_count "$dir/w5-$tag")
  t_once=$(now)
  /usr/bin/time -v -o "$dir/once-$tag.time" "$bin" --log-format json once \
    --config "$cfg" --kubeconfig "$dir/pullkeeper.kubeconfig" --instance "$instance" \
    --writes-per-second "$rate" --concurrency "$c" >"$dir/once-$tag.log" 2>&1 || once_rc=$?
  once_s=$(elapsed "$t_once" "$(now)")
  w6=$(write_count "$dir/w6-$tag")
  local once_hwm once_cpu
  once_hwm=$(awk -F': ' '/Maximum resident set size/ {print $2}' "$dir/once-$tag.time")
  once_cpu=$(awk -F': ' '/User time/ {u = $2} /System time/ {s = $2} END {printf "%.2f\n", u + s}' "$dir/once-$tag.time")

  # Second pass B: restart `pullkeeper run` (fresh caches, full resync).
  log "N=$n C=$c rate=$rate: second pass by restarting pullkeeper run"
  local w7 w8 t_restart restart_ready pk8 restart_hwm
  w7=$(write_count "$dir/w7-$tag")
  start_daemon "$instance" "$rate" "$c" "$cfg" "$dir/daemon-$tag-restart.log"
  t_restart=$(now)
  wait_for 120 "the restarted daemon to be ready" ready
  restart_ready=$(elapsed "$t_restart" "$(now)")
  sleep "$SETTLE"
  w8=$(write_count "$dir/w8-$tag")
  pk8=$(pk_writes)
  restart_hwm=$(vm_field "$daemon_pid" VmHWM)
  [[ $keep == 1 ]] || stop_daemon

  local e w pl fs
  read -r e w pl fs <<<"$apf_pk"
  record --arg kind pk --arg n "$n" --arg c "$c" --arg rate "$rate" --arg instance "$instance" \
    --arg result "$result" --arg pass_s "$( [[ $result == done ]] && elapsed "$t0" "$pass_end" || echo never)" \
    --arg ready_s "$(elapsed "$t0" "$t_ready")" \
    --arg secrets_s "$(since "$t0" "$(pass_field "$pf" all_secrets)")" \
    --arg refs_s "$(since "$t0" "$(pass_field "$pf" all_references)")" \
    --arg first_write_s "$(since "$t0" "$(pass_field "$pf" first_write_seen)")" \
    --arg in_place "$(pass_field "$pf" references)" --arg missing "$(jq -r '.missing // [] | join(" ")' "$pf")" \
    --arg w_done "$((w1 - w0))" --arg w_settled "$((w2 - w0))" \
    --arg w_detail "$(breakdown_delta "$dir/w0-$tag" "$dir/w2-$tag")" \
    --arg pk "${pk2%% *}" --arg pk_detail "${pk2#* }" \
    --arg cpu_pass "$cpu_pass" --arg idle_cpu "$(sub "$c1" "$c0")" --arg idle_s "$(elapsed "$t_idle0" "$t_idle1")" \
    --arg idle_note "$idle_note" --arg sweep_s "$sweep_s" --arg sweep_cpu "$sweep_cpu" \
    --arg sweep_writes "$((w4 - w3))" \
    --arg hwm "$(kib_to_mib "$hwm")" --arg rss "$(kib_to_mib "$rss")" \
    --arg apf_exec "$e" --arg apf_wait "$w" --arg apf_pl "$pl" --arg apf_fs "$fs" \
    --arg apf_samples "$(apf_samples "$t0" "$pass_end")" \
    --arg once_w "$((w6 - w5))" --arg once_detail "$(breakdown_delta "$dir/w5-$tag" "$dir/w6-$tag")" \
    --arg once_rc "$once_rc" --arg once_s "$once_s" --arg once_cpu "$once_cpu" \
    --arg once_hwm "$(kib_to_mib "${once_hwm:-0}")" \
    --arg restart_w "$((w8 - w7))" --arg restart_detail "$(breakdown_delta "$dir/w7-$tag" "$dir/w8-$tag")" \
    --arg restart_pk "${pk8%% *}" --arg restart_ready "$restart_ready" \
    --arg restart_hwm "$(kib_to_mib "$restart_hwm")"
  last_instance=$instance last_secret=$secret
}

# --- one raw-writer run --------------------------------------------------------------------------
raw_run() { # N C
  local n=$1 c=$2 instance secret tag
  instance=$(raw_instance "$n" "$c") secret=$(raw_secret "$n" "$c") tag=raw-n$n-c$c
  reset_accounts
  jq --arg i "$instance" '.metadata.labels["pullkeeper.dev/instance"] = $i' "$dir/template.json" >"$dir/template-$tag.json"
  log "N=$n C=$c: raw writer"
  local selector="app.kubernetes.io/managed-by=pullkeeper,pullkeeper.dev/instance=$instance"
  start_pass_watch "$selector" "$secret" "$dir/pass-$tag.json"
  local w0 w1 t0
  w0=$(write_count "$dir/w0-$tag")
  t0=$(now)
  "$pkbench" raw-write --kubeconfig "$dir/raw.kubeconfig" --selector "$LABEL=true" \
    --template "$dir/template-$tag.json" --secret "$secret" \
    --annotation "pullkeeper.dev/image-pull-secrets.$instance" --concurrency "$c" \
    >"$dir/raw-$tag.json" 2>>"$dir/raw.log"
  wait "$pass_pid" || true
  w1=$(write_count "$dir/w1-$tag")
  local pf=$dir/pass-$tag.json pass_end e w pl fs result
  result=$(pass_field "$pf" result)
  pass_end=$(jq -r '[.all_secrets, .all_references] | if min == 0 then 0 else max end' "$pf")
  [[ $pass_end != 0 ]] || pass_end=$(now)
  read -r e w pl fs <<<"$(apf_max "$RAW_USER" "$t0" "$pass_end")"
  record --arg kind raw --arg n "$n" --arg c "$c" --arg result "$result" \
    --arg pass_s "$( [[ $result == done ]] && elapsed "$t0" "$pass_end" || echo never)" --arg self_s "$(jq -r '.total_s' "$dir/raw-$tag.json")" \
    --arg list_s "$(jq -r '.list_s' "$dir/raw-$tag.json")" --arg cpu "$(jq -r '.cpu_s' "$dir/raw-$tag.json")" \
    --arg requests "$(jq -c '.requests' "$dir/raw-$tag.json")" \
    --arg w_done "$((w1 - w0))" --arg w_detail "$(breakdown_delta "$dir/w0-$tag" "$dir/w1-$tag")" \
    --arg apf_exec "$e" --arg apf_wait "$w" --arg apf_pl "$pl" --arg apf_fs "$fs" \
    --arg apf_samples "$(apf_samples "$t0" "$pass_end")"
  log "N=$n C=$c: raw writer done in $(elapsed "$t0" "$pass_end") s ($(jq -c '.requests' "$dir/raw-$tag.json"))"
}

# --- latency and waves, on the running daemon ----------------------------------------------------
latency_and_waves() { # N
  local n=$1 instance=$last_instance secret=$last_secret
  local selector="app.kubernetes.io/managed-by=pullkeeper,pullkeeper.dev/instance=$instance"
  log "N=$n: new-namespace latency, idle ($LAT_COUNT namespaces, $LAT_INTERVAL apart)"
  "$pkbench" latency --kubeconfig "$KUBECONFIG" --prefix "pkl-$n-i" --count "$LAT_COUNT" \
    --labels "$LABEL=true,$EXTRA=true" --secret "$secret" --interval "$LAT_INTERVAL" \
    >"$dir/latency-$n.json" 2>>"$dir/latency.log"
  record --arg kind latency --arg n "$n" --argjson data "$(cat "$dir/latency-$n.json")"
  sleep 5
  local w0 w1 pk0 pk1
  log "N=$n: rotation wave"
  w0=$(write_count "$dir/w0-wave-$n") pk0=$(pk_writes)
  "$pkbench" wave --kubeconfig "$KUBECONFIG" --secret-labels "$selector" --secret "$secret" \
    --password-file "$dir/password" --timeout "${TIMEOUT}s" --stall "${STALL}s" \
    >"$dir/wave-$n.json" 2>>"$dir/wave.log"
  sleep 5
  w1=$(write_count "$dir/w1-wave-$n") pk1=$(pk_writes)
  record --arg kind wave --arg n "$n" --argjson data "$(cat "$dir/wave-$n.json")" \
    --arg writes "$((w1 - w0))" --arg detail "$(breakdown_delta "$dir/w0-wave-$n" "$dir/w1-wave-$n")" \
    --arg pk_writes "$(( ${pk1%% *} - ${pk0%% *} ))"
  log "N=$n: wave $(jq -c '{rotated, first_to_last_s, trigger_to_first_s}' "$dir/wave-$n.json"), $((w1 - w0)) writes"
  sleep 5
  log "N=$n: rotation wave with $LAT_COUNT namespaces created during it ($WAVE_INTERVAL apart)"
  w0=$(write_count "$dir/w0-wave2-$n")
  "$pkbench" wave --kubeconfig "$KUBECONFIG" --secret-labels "$selector" --secret "$secret" \
    --password-file "$dir/password" --timeout "${TIMEOUT}s" --stall "${STALL}s" \
    --new-prefix "pkl-$n-w" --new-count "$LAT_COUNT" --new-labels "$LABEL=true,$EXTRA=true" \
    --new-interval "$WAVE_INTERVAL" >"$dir/wave2-$n.json" 2>>"$dir/wave.log"
  sleep 5
  w1=$(write_count "$dir/w1-wave2-$n")
  record --arg kind wave2 --arg n "$n" --argjson data "$(cat "$dir/wave2-$n.json")" \
    --arg writes "$((w1 - w0))" --arg detail "$(breakdown_delta "$dir/w0-wave2-$n" "$dir/w1-wave2-$n")"
  stop_daemon
  # The extra namespaces leave the benchmark: out of scope at once, deleted in the background.
  kubectl label namespace -l "$EXTRA=true" "$LABEL-" >/dev/null
  kubectl delete namespace -l "$EXTRA=true" --wait=false >/dev/null
}

# --- the run -------------------------------------------------------------------------------------
: >"$dir/results.jsonl"
for n in "${SIZES[@]}"; do
  if (( have < n )); then
    log "creating namespaces $((have + 1))..$n labelled $LABEL=true"
    t_ns=$(now)
    create_namespaces $((have + 1)) "$n"
    all_default_sas() { [[ $(count_default_sas) -ge $n ]]; }
    wait_for "$TIMEOUT" "a default ServiceAccount in each of the $n namespaces" all_default_sas
    record --arg kind namespaces --arg n "$n" --arg created "$((n - have))" --arg seconds "$(elapsed "$t_ns" "$(now)")"
    log "$((n - have)) namespaces with their default ServiceAccount in $(elapsed "$t_ns" "$(now)") s"
    have=$n
  fi
  # The previous size's extra namespaces must be gone: their deletion writes would count.
  no_extra() { [[ -z $(kubectl get namespace -l "$EXTRA=true" -o name 2>/dev/null) ]]; }
  wait_for 300 "the extra namespaces of the previous size to be deleted" no_extra ||
    log "extra namespaces still present: the next write counts may include their deletion"
  for ((ci = 0; ci < ${#CONCS[@]}; ci++)); do
    c=${CONCS[ci]}
    raw_run "$n" "$c"
    for ((ri = 0; ri < ${#RATES[@]}; ri++)); do
      keep=0
      (( ci == ${#CONCS[@]} - 1 && ri == ${#RATES[@]} - 1 )) && keep=1
      pk_run "$n" "$c" "${RATES[ri]}" "$keep"
    done
  done
  latency_and_waves "$n"
done
kill "$apf_pid" 2>/dev/null || true
wait "$apf_pid" 2>/dev/null || true
apf_pid=
api /metrics | grep -E '^apiserver_flowcontrol_(nominal_limit_seats|current_limit_seats)\{.*priority_level="(workload-low|global-default)"' \
  >"$dir/apf-limits.txt" || true

# --- figures ------------------------------------------------------------------------------------
commit=$(git -C "$root" rev-parse --short HEAD 2>/dev/null || echo unknown)
git -C "$root" diff --quiet HEAD -- src Cargo.toml Cargo.lock 2>/dev/null || commit="$commit+local changes"
{
  echo "pullkeeper fan-out benchmark: namespaces ${SIZES[*]}, concurrency ${CONCS[*]}, write rates ${RATES[*]} (0 = unlimited)"
  echo "$pk_version (commit $commit); control plane $PK_KUBE_VERSION (tests/cluster, no node); $(nproc) cores; $(date -u +%Y-%m-%dT%H:%MZ)"
  echo "whole run: $(elapsed "$t_script" "$(now)") s; scratch dir $dir"
} >"$dir/header.txt"
plot_args=()
if [[ -n $PLOT ]]; then
  if ! python3 -c 'import matplotlib' 2>/dev/null; then
    log "installing matplotlib with pip (for the plot)"
    python3 -m pip install --quiet matplotlib >&2 || log "pip install matplotlib failed: no plot"
  fi
  python3 -c 'import matplotlib' 2>/dev/null && plot_args=(--plot "$PLOT")
fi
python3 "$root/bench/report.py" "$dir/results.jsonl" --header "$dir/header.txt" \
  --apf-limits "$dir/apf-limits.txt" --markdown "$dir/figures.md" "${plot_args[@]}"
