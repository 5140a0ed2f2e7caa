#!/usr/bin/env bash
# bench/recovery.sh (`make bench-recovery`): pod recovery at scale on the real node. N namespaces
# (default 20) each get a Deployment whose Pod is stuck in ImagePullBackOff before pullkeeper runs;
# then pullkeeper starts with --pod-recovery on and this prints, per Pod, the time from pullkeeper's
# start until its replacement is Running with the Secret — p50, p99, max — and the number of
# deletions pullkeeper made (it must equal N). Figures, not assertions: bench/README.md has them.
#
# Starts its own platform WITH the node, so no other node may run on this machine meanwhile.
# Env: PK_BENCH_STUCK=N; PK_BENCH_RECOVERY_ARGS="..." replaces the recovery limits below.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)
cd "$root"
# shellcheck source=tests/cluster/lib.sh
. tests/cluster/lib.sh

n=${PK_BENCH_STUCK:-20}
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
token=$(kubectl -n pullkeeper create token pullkeeper --duration 1h)
kc="$dir/pullkeeper.kubeconfig"
cp "$KUBECONFIG" "$kc"
KUBECONFIG="$kc" kubectl config set-credentials pk-test-admin --token "$token" >/dev/null
until KUBECONFIG="$kc" kubectl auth can-i delete pods -A >/dev/null 2>&1; do sleep 0.5; done

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
  replicas: 1
  selector: {matchLabels: {app: bench}}
  template:
    metadata: {labels: {app: bench}}
    spec:
      hostNetwork: true
      terminationGracePeriodSeconds: 1
      containers: [{name: app, image: "$image", imagePullPolicy: Always}]
YAML
done
pk_log "waiting for $n Pods to be stuck in ImagePullBackOff"
until [[ $(kubectl get pods -A -l app=bench -o json | python3 -c '
import json, sys
pods = json.load(sys.stdin)["items"]
print(sum(1 for p in pods for c in p.get("status", {}).get("containerStatuses", [])
          if (c.get("state", {}).get("waiting") or {}).get("reason") == "ImagePullBackOff"))') -ge $n ]]; do
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
  --log-format json --pod-recovery on --recovery-interval 1s $limits >"$dir/pullkeeper.log" 2>&1 &
pk_pid=$!

# Poll the Pods: the first moment each namespace has a Running Pod that names the Secret.
python3 - "$n" "$start" "$dir/running.txt" <<'PY'
import json, subprocess, sys, time
n, start, out = int(sys.argv[1]), float(sys.argv[2]), sys.argv[3]
seen = {}
deadline = time.time() + 600
while len(seen) < n and time.time() < deadline:
    pods = json.loads(subprocess.check_output(["kubectl", "get", "pods", "-A", "-l", "app=bench", "-o", "json"]))["items"]
    now = time.time()
    for p in pods:
        ns = p["metadata"]["namespace"]
        refs = [r["name"] for r in p["spec"].get("imagePullSecrets", [])]
        if ns not in seen and p.get("status", {}).get("phase") == "Running" and "htpasswd-pull" in refs:
            seen[ns] = now - start
    time.sleep(0.2)
with open(out, "w") as f:
    for ns, t in sorted(seen.items(), key=lambda kv: kv[1]):
        f.write(f"{t:.3f} {ns}\n")
PY
deletions=$(curl -fsS "http://127.0.0.1:$admin_port/metrics" | awk '/^pullkeeper_pods_recovered_total\{registry="htpasswd"\}/ {print $2}')
python3 - "$dir/running.txt" "$n" "${deletions:-0}" "$limits" <<'PY'
import sys
times = sorted(float(l.split()[0]) for l in open(sys.argv[1]) if l.strip())
n, deletions, limits = int(sys.argv[2]), sys.argv[3], sys.argv[4]
def pct(p):
    if not times:
        return float("nan")
    k = max(0, min(len(times) - 1, round(p / 100 * len(times) + 0.5) - 1))
    return times[k]
print(f"pod recovery, {n} stuck Pods in {n} namespaces ({limits}, --recovery-interval 1s):")
print(f"  Running with the Secret: {len(times)}/{n}")
print(f"  time from pullkeeper start: p50 {pct(50):.2f} s, p99 {pct(99):.2f} s, max {max(times) if times else float('nan'):.2f} s")
print(f"  deletions made: {deletions} (expected {n})")
PY
