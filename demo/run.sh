#!/usr/bin/env bash
# make demo: pullkeeper end to end on this machine, the way a user would check it by hand.
#
# Starts a real Kubernetes control plane (tests/cluster/up), a token-auth registry with its token
# server (tests/peers/up) and a credential broker (demo/broker.py), runs pullkeeper with
# config/examples/demo/ under its own least-privilege RBAC, and shows: the Secret in several
# namespaces (also one created later), the patched `default` ServiceAccount, a new Pod carrying
# imagePullSecrets, skopeo pulling with the written Secret, the rotation reaching the namespaces
# when the broker's credential changes, and — on the platform's real node — a Deployment created
# before pullkeeper ran, stuck in ImagePullBackOff, recovered and Running. Ctrl-C stops everything.
# The node is one per machine: run it when no other test platform with a node runs.
# PK_DEMO_EXIT=1 stops after the walk-through instead of waiting (used by the test suite).
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)
cd "$root"
. tests/cluster/lib.sh

dir=$(pk_abs_dir "${PK_DEMO_DIR:-$(mktemp -d "${TMPDIR:-/tmp}/pullkeeper-demo.XXXXXX")}")
logs=$dir/logs pids=$dir/pids
mkdir -p "$logs" "$pids" "$dir/config"
say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
show() { printf '$ %s\n' "$*"; "$@"; }

stop_all() {
  local rc=$?
  trap - EXIT INT TERM
  say "stopping everything"
  pk_stop "$pids/pullkeeper.pid" || true
  pk_stop "$pids/broker.pid" || true
  tests/peers/down "$dir" >/dev/null 2>&1 || true
  tests/cluster/down "$dir" >/dev/null 2>&1 || true
  echo "logs kept in $logs"
  exit "$rc"
}
trap stop_all EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# The first run on a fresh machine is mostly compiling (figures in README.md, "Run it"): the
# Debian packages and moto, pullkeeper with cargo, then the control plane from Kubernetes' Go
# modules. Every step shows its progress; all of it is cached, so a second run starts at once.
# `make test` reuses the same cargo build (same target directory and dependency features:
# tests/checks/one-build.sh).
say "installing what is missing and building pullkeeper (the first run takes a while: README.md, \"Run it\")"
tests/prereqs.sh --demo
pk_heartbeat "cargo build" cargo build --bin pullkeeper
bin=${CARGO_TARGET_DIR:-$root/target}/debug/pullkeeper

say "starting a local control plane with a node, a token-auth registry and a credential broker (the first run builds the control plane: 8 minutes or more)"
tests/cluster/up "$dir" >/dev/null
tests/peers/up "$dir" >/dev/null
. "$dir/env"
. "$dir/peers.env"
read -r broker_port admin_port < <(pk_free_ports 2)
pk_start broker "$logs/broker.log" "$pids/broker.pid" python3 demo/broker.py --port "$broker_port" \
  --users "$dir/peers/registry-token/users.json" --user "$PK_REGISTRY_TOKEN_USER" --password "$PK_REGISTRY_TOKEN_PASSWORD"
pk_wait_until 20 "$pids/broker.pid" pk_http_status_is "http://127.0.0.1:$broker_port/token" 200 \
  || pk_die "the broker did not start: $(tail -5 "$logs/broker.log")"
sed -e "s#127.0.0.1:18080#127.0.0.1:$broker_port#" -e "s#127.0.0.1:5000#$PK_REGISTRY_TOKEN#" \
  config/examples/demo/demo.yaml >"$dir/config/demo.yaml"
echo "control plane $PK_KUBE_SERVER, registry $PK_REGISTRY_TOKEN, broker 127.0.0.1:$broker_port"

say "installing pullkeeper's RBAC and running it with only its ServiceAccount's token"
kubectl create namespace pullkeeper >/dev/null
kubectl apply -f deploy/kustomize/base/rbac.yaml -f deploy/kustomize/base/admission-policy.yaml >/dev/null
# The role grants Secrets by name: the names of this config, as `check --rbac` prints them.
"$bin" check --config "$dir/config" --rbac | kubectl apply -f - >/dev/null
token=$(kubectl create token pullkeeper -n pullkeeper --duration 2h)
kc=$dir/pullkeeper.kubeconfig
KUBECONFIG=$kc kubectl config set-cluster demo --server "$PK_KUBE_SERVER" --certificate-authority "$PK_KUBE_CA_FILE" --embed-certs >/dev/null
KUBECONFIG=$kc kubectl config set-credentials pullkeeper --token "$token" >/dev/null
KUBECONFIG=$kc kubectl config set-context demo --cluster demo --user pullkeeper >/dev/null
KUBECONFIG=$kc kubectl config use-context demo >/dev/null
for ns in team-a team-b team-c; do
  kubectl create namespace "$ns" >/dev/null
  kubectl label namespace "$ns" pullkeeper-demo=true >/dev/null
done
kubectl create namespace not-selected >/dev/null

wait_for() { # wait_for DESCRIPTION CMD...: polls for up to 90 s
  local what=$1 deadline=$((SECONDS + 90))
  shift
  until "$@" >/dev/null 2>&1; do
    ((SECONDS < deadline)) || pk_die "timed out waiting for $what"
    sleep 0.5
  done
}

say "0. before pullkeeper runs: a Deployment in team-stuck cannot pull its private image"
kubectl create namespace team-stuck >/dev/null
kubectl label namespace team-stuck pullkeeper-demo=true >/dev/null
cat <<YAML | kubectl apply -n team-stuck -f - >/dev/null
apiVersion: apps/v1
kind: Deployment
metadata: {name: web}
spec:
  replicas: 1
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      hostNetwork: true
      terminationGracePeriodSeconds: 1
      containers: [{name: web, image: "$PK_REGISTRY_TOKEN/$PK_TEST_IMAGE", imagePullPolicy: Always}]
YAML
stuck_reason() { kubectl get pods -n team-stuck -l app=web -o jsonpath='{.items[0].status.containerStatuses[0].state.waiting.reason}'; }
is_backoff() { [[ $(stuck_reason) == ImagePullBackOff ]]; }
wait_for "the Deployment's Pod in ImagePullBackOff" is_backoff
stuck_uid=$(kubectl get pods -n team-stuck -l app=web -o jsonpath='{.items[0].metadata.uid}')
show kubectl get pods -n team-stuck -o wide
kubectl get events -n team-stuck --field-selector "involvedObject.uid=$stuck_uid,reason=Failed" \
  -o custom-columns=REASON:.reason,MESSAGE:.message | head -3

# Pod recovery is opt-in, with its own optional RBAC (deploy/kustomize/components/pod-recovery).
kubectl apply -f deploy/kustomize/components/pod-recovery/rbac.yaml >/dev/null
show "$bin" check --config "$dir/config"
pk_start pullkeeper "$logs/pullkeeper.log" "$pids/pullkeeper.pid" "$bin" run --config "$dir/config" \
  --kubeconfig "$kc" --admin-addr "127.0.0.1:$admin_port" --reload-interval 2s \
  --pod-recovery on --recovery-interval 2s
pk_wait_until 60 "$pids/pullkeeper.pid" pk_http_status_is "http://127.0.0.1:$admin_port/readyz" 200 \
  || pk_die "pullkeeper did not become ready: $(tail -20 "$logs/pullkeeper.log")"

has_secret() { kubectl get secret demo-registry-pull -n "$1"; }
for ns in team-a team-b team-c; do wait_for "the Secret in $ns" has_secret "$ns"; done

say "1. the Secret is in every selected namespace (and not in the others)"
show kubectl get secrets -A -l app.kubernetes.io/managed-by=pullkeeper \
  -o custom-columns=NAMESPACE:.metadata.namespace,NAME:.metadata.name,TYPE:.type,HASH:.metadata.annotations.pullkeeper\\.dev/content-hash

say "2. a namespace created now gets it within moments"
show kubectl create namespace team-late
show kubectl label namespace team-late pullkeeper-demo=true
wait_for "the Secret in team-late" has_secret team-late
refs() { kubectl get serviceaccount default -n "$1" -o jsonpath='{.imagePullSecrets[*].name}'; }
sa_patched() { [[ $(refs "$1") == *demo-registry-pull* ]]; }
wait_for "the default ServiceAccount in team-late" sa_patched team-late
show kubectl get secret demo-registry-pull -n team-late

say "3. the default ServiceAccount references it"
show kubectl get serviceaccount default -n team-a -o jsonpath='{.imagePullSecrets}{"\n"}{.metadata.annotations}{"\n"}'

say "4. a new Pod carries imagePullSecrets (copied in by the ServiceAccount admission plugin)"
show kubectl run app -n team-a --image "$PK_REGISTRY_TOKEN/$PK_TEST_IMAGE" --restart=Never >/dev/null
show kubectl get pod app -n team-a -o jsonpath='{.spec.imagePullSecrets}{"\n"}'

authfile() { kubectl get secret demo-registry-pull -n team-a -o jsonpath='{.data.\.dockerconfigjson}' | base64 -d >"$1"; }
pull() { skopeo inspect --tls-verify=false --authfile "$1" "docker://$PK_REGISTRY_TOKEN/$PK_TEST_IMAGE" --format '{{.Digest}}'; }
say "5. skopeo pulls with the written Secret"
authfile "$dir/before.json"
show pull "$dir/before.json"

say "6. the broker rotates the credential: the old one stops working, pullkeeper rotates everywhere"
hash() { kubectl get secret demo-registry-pull -n "$1" -o jsonpath='{.metadata.annotations.pullkeeper\.dev/content-hash}'; }
old_hash=$(hash team-a)
show curl -s -X POST "http://127.0.0.1:$broker_port/rotate"
echo
if pull "$dir/before.json" >/dev/null 2>&1; then pk_die "the old credential still works after rotation"; fi
echo "the old credential is refused by the registry now"
changed() { [[ $(hash "$1") != "$old_hash" ]]; }
for ns in team-a team-b team-c team-late; do wait_for "the rotated Secret in $ns" changed "$ns"; done
show kubectl get secrets -A -l app.kubernetes.io/managed-by=pullkeeper \
  -o custom-columns=NAMESPACE:.metadata.namespace,NAME:.metadata.name,HASH:.metadata.annotations.pullkeeper\\.dev/content-hash,UID:.metadata.uid
authfile "$dir/after.json"
show pull "$dir/after.json"
say "7. the Deployment that was stuck before pullkeeper ran: its Pod was recreated and runs"
web_running() {
  kubectl get pods -n team-stuck -l app=web -o jsonpath='{range .items[*]}{.metadata.uid} {.status.phase}{"\n"}{end}' \
    | grep -v "^$stuck_uid " | grep -q ' Running$'
}
wait_for "the recreated Pod in team-stuck Running" web_running
show kubectl get pods -n team-stuck -o custom-columns=NAME:.metadata.name,STATUS:.status.phase,PULL-SECRETS:.spec.imagePullSecrets[*].name
new_uid=$(kubectl get pods -n team-stuck -l app=web -o jsonpath='{.items[0].metadata.uid}')
echo "pullkeeper's Event on the stuck Pod, and the new Pod's own Events:"
kubectl get events -n team-stuck --field-selector "involvedObject.uid=$stuck_uid,reason=Recovered" \
  -o custom-columns=REASON:.reason,MESSAGE:.message,SOURCE:.reportingComponent
kubectl get events -n team-stuck --field-selector "involvedObject.uid=$new_uid" -o custom-columns=REASON:.reason,MESSAGE:.message \
  | grep -E 'REASON|Pulled|Started'
kubectl get events -n team-stuck --field-selector "involvedObject.uid=$new_uid,reason=Pulled" -o name | grep -q . \
  || pk_die "the recreated Pod has no Pulled event"

say "what pullkeeper reports on /metrics"
curl -s "http://127.0.0.1:$admin_port/metrics" | grep -E '^pullkeeper_(refresh_total|managed_secrets|managed_service_accounts|writes_total|credential_expiry|pods_recovered_total|pods_stuck)' || true

if [[ ${PK_DEMO_EXIT:-0} == 1 ]]; then
  say "demo complete"
  exit 0
fi
say "pullkeeper keeps running (logs: $logs/pullkeeper.log, metrics: http://127.0.0.1:$admin_port/metrics)"
echo "try: curl -X POST http://127.0.0.1:$broker_port/rotate   — Ctrl-C stops everything"
while pk_alive "$pids/pullkeeper.pid"; do sleep 1; done
pk_die "pullkeeper exited: $(tail -20 "$logs/pullkeeper.log")"
