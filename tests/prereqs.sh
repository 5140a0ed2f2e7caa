#!/usr/bin/env bash
# Installs what the tests and the demo need and a fresh machine of this kind lacks: Debian's
# docker-registry, skopeo, prometheus (promtool), openssl, apache2-utils, curl, util-linux, make,
# and for the test node containerd, runc, containernetworking-plugins, iptables, iproute2;
# PyPI's moto[server]. Fast when everything is present. Needs root (or sudo) for apt-get.
# The node runs its own containerd (tests/cluster/node.sh): if installing the package starts the
# system's containerd service, it is stopped again at once.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)
CARGO_DENY_VERSION=0.20.2
. "$root/tests/cluster/lib.sh"
as_root() { if [[ $(id -u) -eq 0 ]]; then "$@"; else sudo "$@"; fi; }

declare -A debian_package_of=(
  [docker-registry]=docker-registry [skopeo]=skopeo [promtool]=prometheus [openssl]=openssl
  [htpasswd]=apache2-utils [curl]=curl [setsid]=util-linux [flock]=util-linux [make]=make
  [containerd]=containerd [ctr]=containerd [containerd-shim-runc-v2]=containerd [runc]=runc
  [iptables]=iptables [ip6tables]=iptables [ip]=iproute2
)
missing=()
for cmd in "${!debian_package_of[@]}"; do
  command -v "$cmd" >/dev/null 2>&1 || missing+=("${debian_package_of[$cmd]}")
done
for plugin in bridge host-local loopback; do
  [[ -x /usr/lib/cni/$plugin ]] || missing+=(containernetworking-plugins)
done
if ((${#missing[@]})); then
  mapfile -t missing < <(printf '%s\n' "${missing[@]}" | sort -u)
  mapfile -t containerd_before < <(pgrep -x containerd || true)
  pk_log "installing Debian packages: ${missing[*]}"
  as_root apt-get update -qq || pk_die "apt-get update failed"
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" \
    || pk_die "apt-get install ${missing[*]} failed"
  # A containerd the package started (its service) is not the node's: stop it, by its pid.
  for pid in $(pgrep -x containerd || true); do
    if [[ " ${containerd_before[*]} " != *" $pid "* ]]; then
      pk_log "the containerd package started the system containerd (pid $pid); stopping it: the test node runs its own"
      if [[ -d /run/systemd/system ]] && command -v systemctl >/dev/null; then
        as_root systemctl stop containerd.service || true
      fi
      as_root kill -TERM "$pid" 2>/dev/null || true
    fi
  done
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
# cargo-deny (licenses, bans, sources of the dependency tree), from crates.io, pinned.
if ! cargo deny --version 2>/dev/null | grep -q "^cargo-deny $CARGO_DENY_VERSION"; then
  pk_log "installing cargo-deny $CARGO_DENY_VERSION with cargo (about 6 minutes the first time)"
  cargo install --quiet --locked cargo-deny --version "$CARGO_DENY_VERSION" || pk_die "cargo install cargo-deny failed"
fi
pk_log "prerequisites present"
