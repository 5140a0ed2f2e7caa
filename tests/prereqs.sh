#!/usr/bin/env bash
# Installs what the tests and the demo need and a fresh machine of this kind lacks: Debian's
# docker-registry, skopeo, prometheus (promtool), openssl, apache2-utils, curl, util-linux, make;
# PyPI's moto[server]. Fast when everything is present. Needs root (or sudo) for apt-get.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)
. "$root/tests/cluster/lib.sh"
as_root() { if [[ $(id -u) -eq 0 ]]; then "$@"; else sudo "$@"; fi; }

declare -A debian_package_of=(
  [docker-registry]=docker-registry [skopeo]=skopeo [promtool]=prometheus [openssl]=openssl
  [htpasswd]=apache2-utils [curl]=curl [setsid]=util-linux [flock]=util-linux [make]=make
)
missing=()
for cmd in "${!debian_package_of[@]}"; do
  command -v "$cmd" >/dev/null 2>&1 || missing+=("${debian_package_of[$cmd]}")
done
if ((${#missing[@]})); then
  mapfile -t missing < <(printf '%s\n' "${missing[@]}" | sort -u)
  pk_log "installing Debian packages: ${missing[*]}"
  as_root apt-get update -qq || pk_die "apt-get update failed"
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" \
    || pk_die "apt-get install ${missing[*]} failed"
fi
command -v python3 >/dev/null || pk_die "python3 is required (moto, the token server)"
if ! python3 -c 'import moto.server, cryptography' >/dev/null 2>&1; then
  pk_log "installing moto[server] with pip"
  python3 -m pip install --quiet "moto[server]" || pk_die "pip install moto[server] failed"
  command -v pyenv >/dev/null 2>&1 && pyenv rehash
fi
command -v go >/dev/null || pk_die "Go (1.26) is required: the test control plane is built from Kubernetes' Go modules"
for tool in cargo rustfmt cargo-clippy kubectl; do
  command -v "$tool" >/dev/null || pk_die "$tool is required"
done
pk_log "prerequisites present"
