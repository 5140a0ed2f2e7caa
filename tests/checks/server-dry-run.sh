#!/usr/bin/env bash
# The shipped manifests are accepted by a real API server: renders the kustomize base, every
# overlay and the Helm chart (default and full values) into a throw-away namespace and sends every
# object through `kubectl apply --dry-run=server` (admission, schema validation, RBAC object
# checks). ServiceMonitor and PrometheusRule are left out: the test control plane has no
# Prometheus Operator CRDs (promtool.sh and prometheus-proof.sh check the rules themselves).
#
# Uses the control plane of the current test run ($KUBECONFIG from tests/cluster/up's env file, as
# tests/run-all.sh exports it); without one it starts its own (tests/cluster/up) and stops it again.
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd -P)"
cd "$root"
# shellcheck source=tests/cluster/lib.sh
. tests/cluster/lib.sh

fail() { echo "server-dry-run.sh: FAIL: $*" >&2; exit 1; }
say() { echo "server-dry-run.sh: $*"; }

for tool in kubectl python3; do
  command -v "$tool" >/dev/null 2>&1 || fail "$tool is required"
done
helm="${PULLKEEPER_BIN:-$HOME/.cache/pullkeeper/bin}/helm"
if [[ ! -x $helm ]]; then
  bash tests/checks/helm.sh >/dev/null || fail "helm.sh (which installs helm) failed"
fi

work="$(mktemp -d "${TMPDIR:-/tmp}/pullkeeper-dry-run.XXXXXX")"
own_cluster=""
ns="pkdry-$(python3 -c 'import secrets; print(secrets.token_hex(3))')"
cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  if [[ -n ${KUBECONFIG:-} ]]; then kubectl delete namespace "$ns" --wait=false >/dev/null 2>&1 || true; fi
  if [[ -n $own_cluster ]]; then tests/cluster/down "$own_cluster" >/dev/null 2>&1 || true; fi
  if [[ $rc -ne 0 ]]; then say "rendered manifests kept in $work"; else rm -rf "$work"; fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

pk_use_or_start_cluster "$work"

# Namespaced objects need their namespace to exist, even for a dry run.
# It enforces (and warns about) the "restricted" Pod Security Standard, as the base's Namespace does.
kubectl create namespace "$ns" >/dev/null || fail "cannot create namespace $ns"
kubectl label namespace "$ns" pod-security.kubernetes.io/enforce=restricted \
  pod-security.kubernetes.io/warn=restricted >/dev/null || fail "cannot label namespace $ns"

# Every kustomization, moved into the throw-away namespace by a wrapper kustomization (which also
# renames the Namespace object and the RBAC subjects' namespace).
renders=()
for dir in deploy/kustomize/base deploy/kustomize/overlays/*/; do
  dir="${dir%/}"
  name="kustomize-$(basename "$dir")"
  mkdir -p "$work/$name"
  printf 'apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\nnamespace: %s\nresources:\n  - %s\n' \
    "$ns" "$(python3 -c 'import os, sys; print(os.path.relpath(sys.argv[1], sys.argv[2]))' "$root/$dir" "$work/$name")" \
    >"$work/$name/kustomization.yaml"
  kubectl kustomize "$work/$name" >"$work/$name.all.yaml" || fail "kubectl kustomize $dir failed"
  renders+=("$name")
done
"$helm" template pullkeeper deploy/helm/pullkeeper --namespace "$ns" >"$work/helm-default.all.yaml" \
  || fail "helm template failed"
"$helm" template pullkeeper deploy/helm/pullkeeper --namespace "$ns" -f deploy/helm/pullkeeper/ci/full-values.yaml \
  --set grafanaDashboard.namespace="$ns" >"$work/helm-full.all.yaml" || fail "helm template (full values) failed"
renders+=(helm-default helm-full)

total=0
for name in "${renders[@]}"; do
  # Drop the Operator's kinds, and the Namespace (it exists already: created above).
  python3 - "$work/$name.all.yaml" "$work/$name.yaml" <<'PY'
import sys, yaml
docs = [d for d in yaml.safe_load_all(open(sys.argv[1])) if d]
keep = [d for d in docs if d["kind"] not in ("ServiceMonitor", "PrometheusRule", "Namespace")]
yaml.safe_dump_all(keep, open(sys.argv[2], "w"), sort_keys=False)
PY
  out="$(kubectl apply --dry-run=server -f "$work/$name.yaml" 2>&1)" \
    || fail "the API server rejects $name: $out"
  if grep -qi 'violate PodSecurity' <<<"$out"; then fail "$name: pods would violate the restricted Pod Security Standard: $out"; fi
  n="$(grep -c 'server dry run' <<<"$out" || true)"
  want="$(python3 -c 'import sys, yaml; print(sum(1 for d in yaml.safe_load_all(open(sys.argv[1])) if d))' "$work/$name.yaml")"
  [[ $n -eq $want ]] || fail "$name: $n of $want objects went through the dry run: $out"
  total=$((total + n))
  say "$name: $n objects accepted"
done
# A Pod made from each Deployment's template, which the PodSecurity admission enforces on.
python3 - "$work/helm-full.yaml" "$work/kustomize-base.yaml" "$ns" >"$work/pods.yaml" <<'PY'
import sys, yaml
pods = []
for path in sys.argv[1:3]:
    for d in yaml.safe_load_all(open(path)):
        if d and d["kind"] == "Deployment":
            t = d["spec"]["template"]
            name = d["metadata"]["name"] + "-" + ("helm" if "helm" in path else "kustomize")
            pods.append({"apiVersion": "v1", "kind": "Pod",
                         "metadata": {"name": name, "namespace": sys.argv[3], "labels": t["metadata"].get("labels", {})},
                         "spec": t["spec"]})
yaml.safe_dump_all(pods, sys.stdout, sort_keys=False)
PY
# The ServiceAccount admission plugin wants the pods' ServiceAccount to exist.
kubectl -n "$ns" create serviceaccount pullkeeper >/dev/null || fail "cannot create ServiceAccount pullkeeper in $ns"
out="$(kubectl apply --dry-run=server -f "$work/pods.yaml" 2>&1)" \
  || fail "the API server rejects pods made from the Deployments (restricted Pod Security Standard?): $out"
say "pods from the Deployments pass the enforced restricted Pod Security Standard"

# The Namespace object itself (restricted Pod Security labels) in a dry run of its own.
kubectl apply --dry-run=server -f deploy/kustomize/base/namespace.yaml >/dev/null \
  || fail "the API server rejects deploy/kustomize/base/namespace.yaml"
say "$total objects from ${#renders[@]} renderings accepted by the API server ($(kubectl version -o json 2>/dev/null | python3 -c 'import json,sys; print(json.load(sys.stdin)["serverVersion"]["gitVersion"])'))"
say "ok"
