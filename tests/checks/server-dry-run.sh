#!/usr/bin/env bash
# The shipped manifests are accepted by a real API server: renders the kustomize base, every
# overlay and the Helm chart (default and full values) into a throw-away namespace and sends every
# object through `kubectl apply --dry-run=server` (admission, schema validation, RBAC object
# checks).
#
# Two phases. First the bare control plane, with no Prometheus Operator CRD: the base, every
# overlay and the chart's defaults must apply whole (nothing is left out), and a ServiceMonitor is
# shown to be refused there. Then stand-in CRDs for ServiceMonitor and PrometheusRule are installed
# (written here: a structural schema of the fields pullkeeper's manifests use, not the Operator's
# own, which is not vendored; promtool.sh and prometheus-proof.sh check the rules themselves), and
# the base with components/prometheus-operator and the chart with both monitoring values on must
# apply whole too, with strict field validation. The CRDs are removed again at the end. Last, the
# chart's notes ask to label a namespace without the restricted Pod Security label, and only then.
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
crds_installed=""
operator_crds=(servicemonitors.monitoring.coreos.com prometheusrules.monitoring.coreos.com)
ns="pkdry-$(python3 -c 'import secrets; print(secrets.token_hex(3))')"
cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  if [[ -n ${KUBECONFIG:-} ]]; then
    kubectl delete namespace "$ns" --wait=false >/dev/null 2>&1 || true
    if [[ -n $crds_installed ]]; then kubectl delete crd "${operator_crds[@]}" --wait=false >/dev/null 2>&1 || true; fi
  fi
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

# The bare-cluster phase means nothing on a control plane that has the Operator's CRDs.
for crd in "${operator_crds[@]}"; do
  if kubectl get crd "$crd" >/dev/null 2>&1; then
    fail "the control plane already has CRD $crd; this check needs one without the Prometheus Operator's CRDs"
  fi
done

# A kustomization moved into the throw-away namespace by a wrapper kustomization (which also
# renames the Namespace object and the RBAC subjects' namespace), optionally with components.
render_kustomize() { # NAME DIR [COMPONENT_DIR...]
  local name=$1 dir=$2 c
  shift 2
  mkdir -p "$work/$name"
  {
    printf 'apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\nnamespace: %s\nresources:\n  - %s\n' \
      "$ns" "$(rel "$dir" "$work/$name")"
    if [[ $# -gt 0 ]]; then
      printf 'components:\n'
      for c in "$@"; do printf '  - %s\n' "$(rel "$c" "$work/$name")"; done
    fi
  } >"$work/$name/kustomization.yaml"
  kubectl kustomize "$work/$name" >"$work/$name.all.yaml" || fail "kubectl kustomize $dir $* failed"
}
rel() { python3 -c 'import os, sys; print(os.path.relpath(sys.argv[1], sys.argv[2]))' "$root/$1" "$2"; }

total=0
# Sends every object of a rendering but the Namespace (created above) through a server-side dry
# run with strict field validation, and checks each went through.
dry_run() { # NAME
  local name=$1 out n want
  python3 - "$work/$name.all.yaml" "$work/$name.yaml" <<'PY'
import sys, yaml
docs = [d for d in yaml.safe_load_all(open(sys.argv[1])) if d]
yaml.safe_dump_all([d for d in docs if d["kind"] != "Namespace"], open(sys.argv[2], "w"), sort_keys=False)
PY
  out="$(kubectl apply --dry-run=server --validate=strict -f "$work/$name.yaml" 2>&1)" \
    || fail "the API server rejects $name: $out"
  if grep -qi 'violate PodSecurity' <<<"$out"; then fail "$name: pods would violate the restricted Pod Security Standard: $out"; fi
  n="$(grep -c 'server dry run' <<<"$out" || true)"
  want="$(python3 -c 'import sys, yaml; print(sum(1 for d in yaml.safe_load_all(open(sys.argv[1])) if d))' "$work/$name.yaml")"
  [[ $n -eq $want ]] || fail "$name: $n of $want objects went through the dry run: $out"
  total=$((total + n))
  renders+=("$name")
  say "$name: $n objects accepted"
}
operator_kinds() { # NAME: the Prometheus Operator kinds in a rendering, one line each
  python3 -c 'import sys, yaml; [print(d["kind"]) for d in yaml.safe_load_all(open(sys.argv[1])) if d and d["apiVersion"].startswith("monitoring.coreos.com/")]' "$work/$1.all.yaml"
}

# --- Phase 1: the bare control plane -----------------------------------------------------------
renders=()
for dir in deploy/kustomize/base deploy/kustomize/overlays/*/; do
  dir="${dir%/}"
  render_kustomize "kustomize-$(basename "$dir")" "$dir"
done
"$helm" template pullkeeper deploy/helm/pullkeeper --namespace "$ns" >"$work/helm-default.all.yaml" \
  || fail "helm template failed"
# The optional pod-recovery component needs no CRD: it applies on the bare cluster too.
render_kustomize kustomize-base-pod-recovery deploy/kustomize/base deploy/kustomize/components/pod-recovery
grep -q -- '--pod-recovery=on' "$work/kustomize-base-pod-recovery.all.yaml" \
  || fail "components/pod-recovery does not turn recovery on"
bare=(helm-default kustomize-base-pod-recovery)
for dir in deploy/kustomize/base deploy/kustomize/overlays/*/; do dir="${dir%/}"; bare+=("kustomize-$(basename "$dir")"); done
for name in "${bare[@]}"; do
  [[ -z $(operator_kinds "$name") ]] || fail "$name renders $(operator_kinds "$name" | tr '\n' ' ')on a bare cluster"
  dry_run "$name"
done

# The component's objects really need the CRDs: without them the API server refuses them.
render_kustomize kustomize-base-monitored deploy/kustomize/base deploy/kustomize/components/prometheus-operator
[[ $(operator_kinds kustomize-base-monitored | sort | tr '\n' ' ') == "PrometheusRule ServiceMonitor " ]] \
  || fail "components/prometheus-operator does not add one ServiceMonitor and one PrometheusRule"
python3 - "$work/kustomize-base-monitored.all.yaml" >"$work/servicemonitor.yaml" <<'PY'
import sys, yaml
yaml.safe_dump([d for d in yaml.safe_load_all(open(sys.argv[1])) if d and d["kind"] == "ServiceMonitor"][0], sys.stdout)
PY
if out="$(kubectl apply --dry-run=server -f "$work/servicemonitor.yaml" 2>&1)"; then
  fail "a ServiceMonitor was accepted without its CRD: the bare-cluster phase proves nothing ($out)"
fi
say "bare control plane: a ServiceMonitor is refused ($(head -n1 <<<"$out" | cut -c1-100))"

# --- Phase 2: with the Prometheus Operator's kinds ---------------------------------------------
crds_installed=yes
kubectl apply -f - >/dev/null <<'YAML' || fail "cannot install the stand-in Prometheus Operator CRDs"
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  name: servicemonitors.monitoring.coreos.com
spec:
  group: monitoring.coreos.com
  scope: Namespaced
  names: {kind: ServiceMonitor, listKind: ServiceMonitorList, plural: servicemonitors, singular: servicemonitor}
  versions:
    - name: v1
      served: true
      storage: true
      schema:
        openAPIV3Schema:
          type: object
          required: [spec]
          properties:
            spec:
              type: object
              required: [selector, endpoints]
              properties:
                selector:
                  type: object
                  properties:
                    matchLabels: {type: object, additionalProperties: {type: string}}
                endpoints:
                  type: array
                  minItems: 1
                  items:
                    type: object
                    required: [port]
                    properties:
                      port: {type: string}
                      path: {type: string, pattern: '^/'}
                      interval: {type: string, pattern: '^([0-9]+(ms|s|m|h|d|w|y))+$'}
---
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  name: prometheusrules.monitoring.coreos.com
spec:
  group: monitoring.coreos.com
  scope: Namespaced
  names: {kind: PrometheusRule, listKind: PrometheusRuleList, plural: prometheusrules, singular: prometheusrule}
  versions:
    - name: v1
      served: true
      storage: true
      schema:
        openAPIV3Schema:
          type: object
          required: [spec]
          properties:
            spec:
              type: object
              required: [groups]
              properties:
                groups:
                  type: array
                  items:
                    type: object
                    required: [name, rules]
                    properties:
                      name: {type: string, minLength: 1}
                      rules:
                        type: array
                        items:
                          type: object
                          required: [alert, expr]
                          properties:
                            alert: {type: string, minLength: 1}
                            expr: {type: string, minLength: 1}
                            for: {type: string, pattern: '^([0-9]+(ms|s|m|h|d|w|y))+$'}
                            labels: {type: object, additionalProperties: {type: string}}
                            annotations: {type: object, additionalProperties: {type: string}}
YAML
kubectl wait --for=condition=Established --timeout=60s crd "${operator_crds[@]}" >/dev/null \
  || fail "the stand-in Prometheus Operator CRDs did not become established"
# Discovery caches may lag the new kinds by a moment.
for _ in $(seq 1 20); do
  kubectl api-resources --api-group=monitoring.coreos.com 2>/dev/null | grep -q '^prometheusrules' && break
  sleep 0.5
done
"$helm" template pullkeeper deploy/helm/pullkeeper --namespace "$ns" -f deploy/helm/pullkeeper/ci/full-values.yaml \
  --set grafanaDashboard.namespace="$ns" >"$work/helm-full.all.yaml" || fail "helm template (full values) failed"
[[ $(operator_kinds helm-full | sort | tr '\n' ' ') == "PrometheusRule ServiceMonitor " ]] \
  || fail "helm with serviceMonitor.enabled and prometheusRule.enabled does not render one of each"
dry_run kustomize-base-monitored
dry_run helm-full
kubectl delete crd "${operator_crds[@]}" >/dev/null || fail "cannot remove the stand-in CRDs"
crds_installed=""

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

# `helm install --create-namespace` makes the namespace without the Pod Security label the
# kustomize base sets: the chart's notes say so, with the one-liner, until the namespace enforces
# "restricted" (helm looks the namespace up in a server dry run as in a real install).
bare_ns="$ns-bare"
kubectl create namespace "$bare_ns" >/dev/null || fail "cannot create namespace $bare_ns"
# A release name of its own: cluster-scoped objects of other installs (the tests' RBAC) may exist.
notes() { "$helm" install "notes-$ns" deploy/helm/pullkeeper --namespace "$bare_ns" --dry-run=server 2>&1; }
out="$(notes)" || fail "helm install --dry-run=server failed: $out"
[[ $out == *"kubectl label namespace $bare_ns pod-security.kubernetes.io/enforce=restricted"* ]] \
  || { kubectl delete namespace "$bare_ns" --wait=false >/dev/null; fail "the chart's notes do not tell to label an unlabelled namespace: $out"; }
kubectl label namespace "$bare_ns" pod-security.kubernetes.io/enforce=restricted >/dev/null
out="$(notes)" || fail "helm install --dry-run=server failed: $out"
kubectl delete namespace "$bare_ns" --wait=false >/dev/null
[[ $out != *"kubectl label namespace"* ]] || fail "the chart's notes ask to label a namespace that enforces restricted: $out"
say "helm's notes name the Pod Security label one-liner for an unlabelled namespace, and only then"

# The Namespace object itself (restricted Pod Security labels) in a dry run of its own.
kubectl apply --dry-run=server -f deploy/kustomize/base/namespace.yaml >/dev/null \
  || fail "the API server rejects deploy/kustomize/base/namespace.yaml"
say "$total objects from ${#renders[@]} renderings accepted by the API server ($(kubectl version -o json 2>/dev/null | python3 -c 'import json,sys; print(json.load(sys.stdin)["serverVersion"]["gitVersion"])'))"
say "ok"
