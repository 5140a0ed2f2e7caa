#!/usr/bin/env bash
# The Helm chart: `helm lint --strict` with default and full values, `helm template` of both, and
# checks of the rendered objects (deploy/check_rendered.py): registry files from values, cloud
# annotations and pod labels, monitoring switches (off by default, so that the defaults install on
# a cluster without the Prometheus Operator; each switch renders only its own kind), and the same
# RBAC rules and pod spec as the kustomize base. A reserved or invalid registry name must make
# rendering fail.
#
# Installs helm from the Go module proxy into $HOME/.cache/pullkeeper/bin when it is missing
# (a cold `go install` takes a few minutes on two cores).
set -euo pipefail
cd "$(dirname "$0")/../.."

HELM_VERSION=v3.22.0
# The Kubernetes minor version helm v3.22.0 is built against (its k8s.io modules are v0.37).
HELM_K8S_MAJOR=1 HELM_K8S_MINOR=37
chart=deploy/helm/pullkeeper
bindir="${PULLKEEPER_BIN:-$HOME/.cache/pullkeeper/bin}"

fail() { echo "helm.sh: FAIL: $*" >&2; exit 1; }

helm="$bindir/helm"
if ! "$helm" version --template '{{.Version}}' 2>/dev/null | grep -qx "$HELM_VERSION"; then
  command -v go >/dev/null 2>&1 || fail "go is needed to install helm $HELM_VERSION"
  echo "helm.sh: installing helm $HELM_VERSION into $bindir (go install)"
  mkdir -p "$bindir"
  # The same -X settings as helm's own release build: without them the binary reports "v3.22"
  # and assumes Kubernetes 1.20 (older than the chart's kubeVersion) for `helm template`.
  pkg=helm.sh/helm/v3
  ldflags="-X $pkg/internal/version.version=$HELM_VERSION"
  for p in pkg/lint/rules pkg/chartutil; do
    ldflags+=" -X $pkg/$p.k8sVersionMajor=$HELM_K8S_MAJOR -X $pkg/$p.k8sVersionMinor=$HELM_K8S_MINOR"
  done
  . tests/cluster/lib.sh
  log="$(mktemp)"
  install_helm() { GOBIN="$bindir" CGO_ENABLED=0 GOFLAGS=-trimpath go install -v -ldflags "$ldflags" "$pkg/cmd/helm@$HELM_VERSION"; }
  pk_with_progress "go install helm (a few minutes cold)" "" "$log" install_helm \
    || { tail -n 40 "$log" >&2; fail "go install helm.sh/helm/v3/cmd/helm@$HELM_VERSION failed"; }
  rm -f "$log"
fi
echo "helm.sh: $("$helm" version --short)"

tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT

"$helm" lint --strict "$chart" || fail "helm lint (default values) failed"
"$helm" lint --strict "$chart" -f "$chart/ci/full-values.yaml" || fail "helm lint (ci/full-values.yaml) failed"

"$helm" template pullkeeper "$chart" --namespace pullkeeper > "$tmp/default.yaml" \
  || fail "helm template (default values) failed"
"$helm" template pullkeeper "$chart" --namespace pullkeeper -f "$chart/ci/full-values.yaml" > "$tmp/full.yaml" \
  || fail "helm template (ci/full-values.yaml) failed"
kubectl kustomize deploy/kustomize/base > "$tmp/kustomize.yaml" || fail "kubectl kustomize deploy/kustomize/base failed"
python3 deploy/check_rendered.py helm "$tmp/default.yaml" "$tmp/full.yaml" "$tmp/kustomize.yaml" \
  || fail "rendered chart is not as expected"

# Each monitoring switch alone renders its own Prometheus Operator kind and no other.
for switch in serviceMonitor=ServiceMonitor prometheusRule=PrometheusRule; do
  value="${switch%=*}" kind="${switch#*=}"
  got="$("$helm" template pullkeeper "$chart" --namespace pullkeeper --set "$value.enabled=true" \
    | grep -E '^kind: (ServiceMonitor|PrometheusRule)$' | sed 's/^kind: //' | tr '\n' ' ')" \
    || fail "helm template --set $value.enabled=true failed"
  [[ $got == "$kind " ]] || fail "$value.enabled=true renders [${got}] instead of one $kind"
done

# admissionPolicy.enabled=false (clusters older than 1.30) leaves out exactly the policy and its
# binding.
got="$("$helm" template pullkeeper "$chart" --namespace pullkeeper --set admissionPolicy.enabled=false \
  | grep -cE '^kind: ValidatingAdmissionPolicy(Binding)?$')" || true
[[ $got == 0 ]] || fail "admissionPolicy.enabled=false still renders $got admission policy objects"

# The registry files rendered from values must pass `pullkeeper check`.
cargo build --bin pullkeeper || fail "cargo build --bin pullkeeper failed"
python3 deploy/check_rendered.py config-dir "$tmp/full.yaml" "$tmp/config" || fail "no ConfigMap rendered"
out="$("${CARGO_TARGET_DIR:-target}/debug/pullkeeper" check --config "$tmp/config" 2>&1)" \
  || fail "registry files rendered from ci/full-values.yaml do not pass pullkeeper check: $out"

# The credential-provider installer (off by default): the kustomize component in a user overlay
# (its node ConfigMap and --match-images, as the component's comment tells) and the chart with
# credentialProvider.installer.enabled render the same DaemonSet — own namespace labelled for the
# privileged Pod Security level, no API token, root without capabilities, read-only root
# filesystem, exactly the two host directories — and the component adds nothing else to the base.
mkdir -p "$tmp/installer"
cp config/examples/ecr.yaml "$tmp/installer/ecr.yaml"
component="$(python3 -c 'import os, sys; print(os.path.relpath(sys.argv[1], sys.argv[2]))' "$PWD/deploy/kustomize/components/credential-provider-installer" "$tmp/installer")"
base="$(python3 -c 'import os, sys; print(os.path.relpath(sys.argv[1], sys.argv[2]))' "$PWD/deploy/kustomize/base" "$tmp/installer")"
cat >"$tmp/installer/kustomization.yaml" <<EOF
apiVersion: kustomize.config.k8s.io/v1beta1
kind: Kustomization
resources: [$base]
components: [$component]
configMapGenerator:
  - name: pullkeeper-node-config
    namespace: pullkeeper-node
    files: [ecr.yaml]
patches:
  - target: {kind: DaemonSet, name: pullkeeper-node-installer}
    patch: |-
      - op: replace
        path: /spec/template/spec/containers/0/args/10
        value: --match-images=*.registry.invalid
EOF
kubectl kustomize "$tmp/installer" >"$tmp/kustomize-installer.yaml" \
  || fail "kubectl kustomize of the base with components/credential-provider-installer failed"
installer_values=(--set credentialProvider.installer.enabled=true
  --set 'credentialProvider.installer.matchImages={*.registry.invalid}'
  --set credentialProvider.installer.registries.ecr.provider.type=ecr
  --set 'credentialProvider.installer.registries.ecr.provider.regions={eu-west-1}')
"$helm" lint --strict "$chart" "${installer_values[@]}" || fail "helm lint (installer enabled) failed"
"$helm" template pullkeeper "$chart" --namespace pullkeeper "${installer_values[@]}" >"$tmp/helm-installer.yaml" \
  || fail "helm template with credentialProvider.installer.enabled failed"
python3 deploy/check_rendered.py installer "$tmp/kustomize.yaml" "$tmp/kustomize-installer.yaml" "$tmp/default.yaml" \
  "$tmp/helm-installer.yaml" "$tmp/installer.config" || fail "the credential-provider installer renders are not as expected"
out="$("${CARGO_TARGET_DIR:-target}/debug/pullkeeper" check --no-file-checks --config "$tmp/installer.config" 2>&1)" \
  || fail "the installer overlay's registry files do not pass pullkeeper check: $out"
# Enabled without the images or the registry files to serve, the chart refuses to render, saying which.
for missing in matchImages registries; do
  set_args=(--set credentialProvider.installer.enabled=true)
  [[ $missing == registries ]] && set_args+=(--set 'credentialProvider.installer.matchImages={a.example.com}')
  if out="$("$helm" template pullkeeper "$chart" "${set_args[@]}" 2>&1)"; then
    fail "credentialProvider.installer.enabled without $missing was accepted"
  fi
  grep -q "credentialProvider.installer.$missing" <<<"$out" || fail "installer without $missing refused without naming it: $out"
done

# Bad registry names are refused at render time, with a message naming the problem.
for bad in defaults 'bad/name'; do
  if out="$("$helm" template pullkeeper "$chart" --set "registries.${bad//./\\.}.provider.type=static" 2>&1)"; then
    fail "registry name '$bad' was accepted"
  fi
  grep -q "registries:" <<<"$out" || fail "registry name '$bad' refused without a clear message: $out"
done

kinds="$(grep -h '^kind:' "$tmp/full.yaml" | sort | uniq -c | awk '{printf "%s%s", sep, $3; sep=", "}')"
echo "helm.sh: rendered $kinds"
echo "helm.sh: ok"
