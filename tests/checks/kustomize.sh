#!/usr/bin/env bash
# Renders the kustomize base and every overlay with `kubectl kustomize` and checks what a user
# relies on: the base's RBAC is rbac.yaml unchanged and least-privilege, the Deployment's
# restricted security context, probes and args, each cloud's workload-identity annotation or
# label, and the PrometheusRule equal to dashboards/alerts.yaml.
set -euo pipefail
cd "$(dirname "$0")/../.."

fail() { echo "kustomize.sh: FAIL: $*" >&2; exit 1; }
command -v kubectl >/dev/null 2>&1 || fail "kubectl is required (it renders the kustomizations)"

tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT

kubectl kustomize deploy/kustomize/base > "$tmp/base.yaml" || fail "kubectl kustomize deploy/kustomize/base failed"
args=()
for dir in deploy/kustomize/overlays/*/; do
  name="$(basename "$dir")"
  kubectl kustomize "$dir" > "$tmp/$name.yaml" || fail "kubectl kustomize $dir failed"
  args+=("$name=$tmp/$name.yaml")
done
python3 deploy/check_rendered.py kustomize "$tmp/base.yaml" "${args[@]}" || fail "rendered manifests are not as expected"
echo "kustomize.sh: base and ${#args[@]} overlays (${args[*]%%=*}) render and pass the checks"
echo "kustomize.sh: ok"
