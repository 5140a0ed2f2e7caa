#!/usr/bin/env bash
# Renders the kustomize base and every overlay with `kubectl kustomize` and checks what a user
# relies on: the base's RBAC is rbac.yaml unchanged and least-privilege, the Deployment's
# restricted security context, probes and args, each cloud's workload-identity annotation or
# label, no Prometheus Operator kind in the base or an overlay (they must apply on a bare cluster),
# the prometheus-operator component adding only its ServiceMonitor and a PrometheusRule equal to
# dashboards/alerts.yaml, no registry file in the base or an overlay (check refuses their empty
# config), and a user overlay that merges its own file holding exactly that file.
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

# The base and the overlays ship no registry file: `pullkeeper check` refuses their config (an
# empty directory), so nothing runs that the user did not write.
cargo build --bin pullkeeper || fail "cargo build --bin pullkeeper failed"
bin="${CARGO_TARGET_DIR:-target}/debug/pullkeeper"
for rendered in "$tmp/base.yaml" "${args[@]#*=}"; do
  conf="${rendered%.yaml}.config"
  python3 deploy/check_rendered.py config-dir "$rendered" "$conf" || fail "no ConfigMap in $rendered"
  if out="$("$bin" check --config "$conf" 2>&1)"; then
    fail "$(basename "${rendered%.yaml}") ships a config pullkeeper would run: $out"
  fi
  [[ $out == *"no registry file"* ]] || fail "$(basename "${rendered%.yaml}"): unexpected check output: $out"
done

# The documented way to add registry files (deploy/README.md): an overlay of a shipped one whose
# configMapGenerator merges its files into pullkeeper-config. Its ConfigMap holds exactly those
# files, under the name the Deployment mounts, and they pass `pullkeeper check`.
declare -A example_of=(
  [base]=static.yaml [eks-irsa]=ecr.yaml [eks-pod-identity]=ecr.yaml [gke]=gcp-metadata.yaml
  [aks]=azure-workload-identity.yaml
)
for name in "${!example_of[@]}"; do
  src=deploy/kustomize/overlays/$name
  [[ $name == base ]] && src=deploy/kustomize/base
  user=$tmp/user-$name
  mkdir -p "$user"
  cp "config/examples/${example_of[$name]}" "$user/"
  cat >"$user/kustomization.yaml" <<YAML
apiVersion: kustomize.config.k8s.io/v1beta1
kind: Kustomization
resources:
  - $(python3 -c 'import os, sys; print(os.path.relpath(sys.argv[1], sys.argv[2]))' "$PWD/$src" "$user")
configMapGenerator:
  - name: pullkeeper-config
    namespace: pullkeeper
    behavior: merge
    files: [${example_of[$name]}]
patches:
  - target: {kind: ClusterRole, name: pullkeeper-secrets}
    patch: |-
      - op: replace
        path: /rules/0/resourceNames
        value: [$(awk '/^secretName:/ {print $2}' "config/examples/${example_of[$name]}")]
YAML
  kubectl kustomize "$user" >"$user.yaml" || fail "kubectl kustomize of a user overlay of $name failed"
  python3 deploy/check_rendered.py config-dir "$user.yaml" "$user.config" || fail "no mounted ConfigMap in the user overlay of $name"
  python3 deploy/check_rendered.py kustomize-user "$user.yaml" || fail "user overlay of $name: rendered manifests are not as expected"
  got=$(cd "$user.config" && ls)
  [[ $got == "${example_of[$name]}" ]] || fail "user overlay of $name: ConfigMap holds [$got], expected only ${example_of[$name]}"
  out="$("$bin" check --no-file-checks --config "$user.config" 2>&1)" \
    || fail "user overlay of $name: its registry file does not pass pullkeeper check: $out"
done
echo "kustomize.sh: base and ${#args[@]} overlays (${args[*]%%=*}) render, pass the checks and ship no registry file; a user overlay of each merges exactly its own file, which passes pullkeeper check"
echo "kustomize.sh: ok"
