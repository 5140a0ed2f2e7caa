#!/usr/bin/env bash
# Installs what the tests and the demo need and a fresh machine of this kind lacks: Debian's
# docker-registry, skopeo, prometheus (promtool), openssl, apache2-utils, curl, util-linux, make,
# tinyproxy (the HTTP proxy tests/proxy.rs sends every provider call through),
# and for the test node containerd, runc, containernetworking-plugins, iptables, iproute2;
# PyPI's moto[server]; crates.io's cargo-deny (not with --demo). Fast when everything is present.
# Needs root (or sudo) for apt-get.
# The node runs its own containerd (tests/cluster/node.sh) and tests/proxy.rs its own tinyproxy: if
# installing a package starts the system's service, it is stopped again at once.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)
CARGO_DENY_VERSION=0.20.2
. "$root/tests/cluster/lib.sh"
as_root() { if [[ $(id -u) -eq 0 ]]; then "$@"; else sudo "$@"; fi; }

declare -A debian_package_of=(
  [docker-registry]=docker-registry [skopeo]=skopeo [promtool]=prometheus [openssl]=openssl
  [htpasswd]=apache2-utils [curl]=curl [setsid]=util-linux [flock]=util-linux [make]=make
  [containerd]=containerd [ctr]=containerd [containerd-shim-runc-v2]=containerd [runc]=runc
  [iptables]=iptables [ip6tables]=iptables [ip]=iproute2 [tinyproxy]=tinyproxy
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
  mapfile -t services_before < <(pgrep -x 'containerd|tinyproxy' || true)
  pk_log "installing Debian packages (about a minute): ${missing[*]}"
  as_root apt-get update || pk_die "apt-get update failed"
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${missing[@]}" \
    || pk_die "apt-get install ${missing[*]} failed"
  # A containerd or tinyproxy the package started (its service) is not the tests': the node runs
  # its own containerd, tests/proxy.rs its own proxy on loopback. Stop it, by its pid.
  for pid in $(pgrep -x 'containerd|tinyproxy' || true); do
    if [[ " ${services_before[*]} " != *" $pid "* ]]; then
      name=$(cat "/proc/$pid/comm" 2>/dev/null || echo service)
      pk_log "the $name package started the system $name (pid $pid); stopping it: the tests run their own"
      if [[ -d /run/systemd/system ]] && command -v systemctl >/dev/null; then
        as_root systemctl stop "$name.service" || true
      fi
      as_root kill -TERM "$pid" 2>/dev/null || true
    fi
  done
fi
command -v python3 >/dev/null || pk_die "python3 is required (moto, the token server)"
if ! python3 -c 'import moto.server, cryptography' >/dev/null 2>&1; then
  pk_log "installing moto[server] with pip (under a minute)"
  python3 -m pip install --progress-bar off "moto[server]" || pk_die "pip install moto[server] failed"
  command -v pyenv >/dev/null 2>&1 && pyenv rehash
fi
command -v go >/dev/null || pk_die "Go (1.26) is required: the test control plane is built from Kubernetes' Go modules"
for tool in cargo rustfmt cargo-clippy kubectl; do
  command -v "$tool" >/dev/null || pk_die "$tool is required"
done
# cargo-deny (licenses, bans, sources of the dependency tree), from crates.io, pinned. Only the
# test suite uses it: `tests/prereqs.sh --demo` (make demo) leaves it out.
if [[ ${1:-} != --demo ]] && ! cargo deny --version 2>/dev/null | grep -q "^cargo-deny $CARGO_DENY_VERSION"; then
  pk_log "installing cargo-deny $CARGO_DENY_VERSION with cargo (about 6 minutes the first time)"
  cargo install --locked cargo-deny --version "$CARGO_DENY_VERSION" || pk_die "cargo install cargo-deny failed"
fi
pk_log "prerequisites present"
