#!/usr/bin/env bash
# Renders the kustomize base and every overlay with `kubectl kustomize` and checks what a user
# relies on: the base's RBAC is rbac.yaml unchanged and least-privilege, the Deployment's
# restricted security context, probes and args, each cloud's workload-identity annotation or
# label, no Prometheus Operator kind in the base or an overlay (they must apply on a bare cluster),
# the prometheus-operator component adding only its ServiceMonitor and a PrometheusRule equal to
# dashboards/alerts.yaml, and the registry files in each ConfigMap accepted by `pullkeeper check`.
set -euo pipefail
cd "$(dirname "$0")/../.."

fail() { echo "kustomize.sh: FAIL: $*" >&2; exit 1; }
command -v kubectl >/dev/null 2>&1 || fail "kubectl is required (it renders the kustomizations)"

tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT

kubectl kustomize deploy/kustomize/base > "$tmp/base.yaml" || fail "kubectl kustomize deploy/kustomize/base failed"
# The base with the optional component, the way deploy/README.md tells a user to add it
# (kustomize wants paths relative to the kustomization).
rel() { python3 -c 'import os, sys; print(os.path.relpath(sys.argv[1], sys.argv[2]))' "$PWD/$1" "$tmp/monitored"; }
mkdir "$tmp/monitored"
printf 'apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\nresources:\n  - %s\ncomponents:\n  - %s\n' \
  "$(rel deploy/kustomize/base)" "$(rel deploy/kustomize/components/prometheus-operator)" >"$tmp/monitored/kustomization.yaml"
kubectl kustomize "$tmp/monitored" > "$tmp/monitored.yaml" \
  || fail "kubectl kustomize of the base with components/prometheus-operator failed"
args=()
for dir in deploy/kustomize/overlays/*/; do
  name="$(basename "$dir")"
  kubectl kustomize "$dir" > "$tmp/$name.yaml" || fail "kubectl kustomize $dir failed"
  args+=("$name=$tmp/$name.yaml")
done
python3 deploy/check_rendered.py kustomize "$tmp/base.yaml" "$tmp/monitored.yaml" "${args[@]}" \
  || fail "rendered manifests are not as expected"

# Every registry file the base and the overlays ship must pass `pullkeeper check`.
cargo build --quiet --bin pullkeeper || fail "cargo build --bin pullkeeper failed"
bin="${CARGO_TARGET_DIR:-target}/debug/pullkeeper"
for rendered in "$tmp/base.yaml" "${args[@]#*=}"; do
  conf="${rendered%.yaml}.config"
  python3 deploy/check_rendered.py config-dir "$rendered" "$conf" || fail "no ConfigMap in $rendered"
  out="$("$bin" check --config "$conf" 2>&1)" \
    || fail "the registry files of $(basename "${rendered%.yaml}") do not pass pullkeeper check: $out"
done
echo "kustomize.sh: base and ${#args[@]} overlays (${args[*]%%=*}) render, pass the checks and their registry files pass pullkeeper check"
echo "kustomize.sh: ok"
