#!/usr/bin/env bash
# bench/recovery.sh (`make bench-recovery`): pod recovery at scale on the real node. N namespaces
# (default 20) each get a Deployment of R replicas (default 1) whose Pods are stuck in
# ImagePullBackOff before pullkeeper runs; then pullkeeper starts with --pod-recovery on and this
# prints, per namespace, the time from pullkeeper's start until all its replacements are Running
# with the Secret, and the time from its ServiceAccount listing the Secret until all its stuck
# replicas were recreated with it — p50, p99, max — and the number of deletions pullkeeper made
# (it must equal N×R). Figures, not assertions: bench/README.md has them.
#
# Starts its own platform WITH the node, so no other node may run on this machine meanwhile.
# Env: PK_BENCH_STUCK=N; PK_BENCH_REPLICAS=R; PK_BENCH_RECOVERY_INTERVAL (default 10s, the
# daemon's); PK_BENCH_RECOVERY_ARGS="..." replaces the recovery limits below.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)
cd "$root"
# shellcheck source=tests/cluster/lib.sh
. tests/cluster/lib.sh

n=${PK_BENCH_STUCK:-20}
replicas=${PK_BENCH_REPLICAS:-1}
interval=${PK_BENCH_RECOVERY_INTERVAL:-10s}
limits=${PK_BENCH_RECOVERY_ARGS:---recovery-per-minute 100 --recovery-per-registry-per-minute 100}
dir=$(mktemp -d "${TMPDIR:-/tmp}/pullkeeper-bench-recovery.XXXXXX")
pk_pid=""
cleanup() {
  if [[ -n $pk_pid ]]; then kill "$pk_pid" 2>/dev/null || true; fi
  tests/peers/down "$dir" >/dev/null 2>&1 || true
  tests/cluster/down "$dir" >/dev/null 2>&1 || true
}
trap cleanup EXIT

tests/prereqs.sh
# A debug build: the figures are the kubelet's and the API server's, not pullkeeper's CPU.
cargo build --all-features --bin pullkeeper
bin="${CARGO_TARGET_DIR:-target}/debug/pullkeeper"
tests/cluster/up "$dir"
tests/peers/up "$dir"
# shellcheck disable=SC1091
. "$dir/env"
# shellcheck disable=SC1091
. "$dir/peers.env"

# pullkeeper's own identity: the shipped base RBAC and the optional pod-recovery component.
kubectl create namespace pullkeeper >/dev/null
kubectl apply -f deploy/kustomize/base/rbac.yaml -f deploy/kustomize/components/pod-recovery/rbac.yaml >/dev/null
# The shipped role grants Secrets by name: grant this config's name, as a user would.
kubectl create clusterrole pullkeeper-bench-secret --verb=get,list,watch,patch,delete \
  --resource=secrets --resource-name=htpasswd-pull >/dev/null
kubectl create clusterrolebinding pullkeeper-bench-secret --clusterrole=pullkeeper-bench-secret \
  --serviceaccount=pullkeeper:pullkeeper >/dev/null
token=$(kubectl -n pullkeeper create token pullkeeper --duration 1h)
kc="$dir/pullkeeper.kubeconfig"
cp "$KUBECONFIG" "$kc"
KUBECONFIG="$kc" kubectl config set-credentials pk-test-admin --token "$token" >/dev/null
until KUBECONFIG="$kc" kubectl auth can-i delete pods -A >/dev/null 2>&1 &&
  KUBECONFIG="$kc" kubectl auth can-i watch secrets/htpasswd-pull -A >/dev/null 2>&1; do sleep 0.5; done

# N stuck Deployments, one per namespace, created before pullkeeper runs.
image="$PK_REGISTRY_HTPASSWD/pullkeeper/test:v1"
for i in $(seq 1 "$n"); do
  ns="bench-recovery-$i"
  kubectl create namespace "$ns" >/dev/null
  kubectl label namespace "$ns" pullkeeper.dev/bench=recovery >/dev/null
  cat <<YAML | kubectl -n "$ns" apply -f - >/dev/null
apiVersion: apps/v1
kind: Deployment
metadata: {name: app}
spec:
  replicas: $replicas
  selector: {matchLabels: {app: bench}}
  template:
    metadata: {labels: {app: bench}}
    spec:
      hostNetwork: true
      terminationGracePeriodSeconds: 1
      containers: [{name: app, image: "$image", imagePullPolicy: Always}]
YAML
done
stuck=$((n * replicas))
pk_log "waiting for $stuck Pods to be stuck in ImagePullBackOff"
until [[ $(kubectl get pods -A -l app=bench -o json | python3 -c '
import json, sys
pods = json.load(sys.stdin)["items"]
print(sum(1 for p in pods for c in p.get("status", {}).get("containerStatuses", [])
          if (c.get("state", {}).get("waiting") or {}).get("reason") == "ImagePullBackOff"))') -ge $stuck ]]; do
  sleep 1
done

mkdir -p "$dir/config"
printf '%s' "$PK_REGISTRY_HTPASSWD_PASSWORD" >"$dir/password"
cat >"$dir/config/htpasswd.yaml" <<YAML
provider:
  type: static
  username: {value: "$PK_REGISTRY_HTPASSWD_USER"}
  password: {file: $dir/password}
servers: ["$PK_REGISTRY_HTPASSWD"]
secretName: htpasswd-pull
namespaces:
  selector: "pullkeeper.dev/bench=recovery"
YAML
read -r admin_port < <(pk_free_ports 1)
start=$(date +%s.%N)
# shellcheck disable=SC2086
"$bin" run --config "$dir/config" --kubeconfig "$kc" --admin-addr "127.0.0.1:$admin_port" \
  --log-format json --pod-recovery on --recovery-interval "$interval" $limits >"$dir/pullkeeper.log" 2>&1 &
pk_pid=$!

# Poll the Pods and ServiceAccounts: per namespace, the first moment its ServiceAccount lists the
# Secret, the first moment all its Pods name the Secret (recreated), and the first moment they all
# run.
python3 - "$n" "$replicas" "$start" "$dir/running.txt" <<'PY'
import json, subprocess, sys, time
n, replicas, start, out = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3]), sys.argv[4]
listed, recreated, running = {}, {}, {}
deadline = time.time() + 600
def get(*args):
    return json.loads(subprocess.check_output(["kubectl", "get", *args, "-o", "json"]))["items"]
while len(running) < n and time.time() < deadline:
    sas = get("serviceaccounts", "-A", "--field-selector", "metadata.name=default")
    pods = get("pods", "-A", "-l", "app=bench")
    now = time.time()
    for sa in sas:
        ns = sa["metadata"]["namespace"]
        if ns not in listed and any(r.get("name") == "htpasswd-pull" for r in sa.get("imagePullSecrets", [])):
            listed[ns] = now
    by_ns = {}
    for p in pods:
        if p["metadata"].get("deletionTimestamp"):
            continue
        by_ns.setdefault(p["metadata"]["namespace"], []).append(p)
    for ns, ps in by_ns.items():
        named = [p for p in ps if "htpasswd-pull" in [r["name"] for r in p["spec"].get("imagePullSecrets", [])]]
        if ns not in recreated and len(named) >= replicas:
            recreated[ns] = now
        if ns not in running and sum(1 for p in named if p.get("status", {}).get("phase") == "Running") >= replicas:
            running[ns] = now
    time.sleep(0.1)
with open(out, "w") as f:
    for ns, t in sorted(running.items(), key=lambda kv: kv[1]):
        after_listed = recreated[ns] - listed[ns] if ns in listed and ns in recreated else float("nan")
        f.write(f"{t - start:.3f} {max(after_listed, 0.0):.3f} {ns}\n")
PY
deletions=$(curl -fsS "http://127.0.0.1:$admin_port/metrics" | awk '/^pullkeeper_pods_recovered_total\{registry="htpasswd"\}/ {print $2}')
python3 - "$dir/running.txt" "$n" "${deletions:-0}" "$limits" "$replicas" "$interval" "$dir/pullkeeper.log" <<'PY'
import json, sys
from datetime import datetime
rows = [l.split() for l in open(sys.argv[1]) if l.strip()]
n, deletions, limits, replicas, interval = int(sys.argv[2]), sys.argv[3], sys.argv[4], int(sys.argv[5]), sys.argv[6]
# pullkeeper's own log: per namespace, its ServiceAccount patch and its last Pod deletion.
patched, deleted = {}, {}
for line in open(sys.argv[7]):
    try:
        e = json.loads(line)
    except ValueError:
        continue
    at = datetime.fromisoformat(e.get("timestamp", "").replace("Z", "+00:00")).timestamp() if e.get("timestamp") else None
    ns = e.get("namespace")
    if at is None or not ns:
        continue
    if e.get("message") == "serviceaccount imagePullSecrets updated":
        patched.setdefault(ns, at)
    elif e.get("message") == "stuck pod deleted so its controller recreates it":
        deleted[ns] = at
logged = [deleted[ns] - patched[ns] for ns in deleted if ns in patched]
def pct(times, p):
    times = sorted(times)
    if not times:
        return float("nan")
    k = max(0, min(len(times) - 1, round(p / 100 * len(times) + 0.5) - 1))
    return times[k]
running = [float(r[0]) for r in rows]
recreated = [float(r[1]) for r in rows]
print(f"pod recovery, {n} namespaces x {replicas} stuck replicas ({limits}, --recovery-interval {interval}):")
print(f"  namespaces all Running with the Secret: {len(rows)}/{n}")
print(f"  all Running, from pullkeeper start: p50 {pct(running, 50):.2f} s, p99 {pct(running, 99):.2f} s, max {max(running, default=float('nan')):.2f} s")
print(f"  all recreated, from the ServiceAccount seen listing the Secret (kubectl polls): p50 {pct(recreated, 50):.2f} s, p99 {pct(recreated, 99):.2f} s, max {max(recreated, default=float('nan')):.2f} s")
print(f"  all deleted, from pullkeeper's ServiceAccount patch (its log): p50 {pct(logged, 50):.2f} s, p99 {pct(logged, 99):.2f} s, max {max(logged, default=float('nan')):.2f} s")
print(f"  deletions made: {deletions} (expected {n * replicas})")
PY
