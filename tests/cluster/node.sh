# The test node: containerd + runc + the kubelet (and kube-scheduler), started by tests/cluster/up
# after the control plane and stopped by tests/cluster/down, which also undoes every change this
# makes to the host. Sourced by both, not run. Needs root. One node per machine (see
# tests/cluster/README.md, "The node").
# shellcheck shell=bash
# shellcheck disable=SC2154 # $dir, $logs, $pids, $pki, $bin, $server, $api_port belong to tests/cluster/up

# Everything machine-wide that the node uses is tied to these names, so `down` finds exactly what
# `up` made and a second node is refused instead of corrupting the first.
PK_NODE_NAME=pk-test-node
PK_NODE_CLAIM=/run/pullkeeper-test-node.dir # holds the DIR of the running node
PK_NODE_CGROUP=/sys/fs/cgroup/unified/pullkeeper-test-node
PK_NODE_CHAIN_OUT=PK-TEST-NODE-OUT
PK_NODE_CHAIN_FWD=PK-TEST-NODE-FWD
PK_NODE_BRIDGE=pk-test0
PK_NODE_POD_CIDR=10.88.0.0/24
PK_NODE_POD_GATEWAY=10.88.0.1
PK_SERVICE_CIDR=10.0.0.0/24
PK_SERVICE_IP=10.0.0.1
PK_NODE_SYSCTLS=(vm.overcommit_memory kernel.panic kernel.panic_on_oops net.ipv4.ip_forward
  net.ipv6.conf.all.forwarding)
PK_DEVICE_PLUGINS=/var/lib/kubelet/device-plugins
PK_SANDBOX_IMAGE=localhost/pullkeeper-test/pause:v1

# pk_node_claim DIR: takes the machine's one node slot for DIR, or dies naming the holder. A claim
# whose node is no longer running (a `down` that never ran) is cleaned up first.
pk_node_claim() {
  local holder=""
  pk_node_refuse_if_taken "$1"
  [[ -s $PK_NODE_CLAIM ]] && holder=$(cat "$PK_NODE_CLAIM")
  if [[ -n $holder ]]; then
    pk_log "undoing the host changes of a node that was not stopped ($holder)"
    pk_node_down "$holder"
  fi
  [[ -d $1/node/host-state ]] && pk_node_down "$1"
  if [[ -S $PK_DEVICE_PLUGINS/kubelet.sock ]]; then
    pk_die "$PK_DEVICE_PLUGINS/kubelet.sock exists: another kubelet seems to run on this machine; \
only one per machine (or start with PK_NO_NODE=1)"
  fi
  if ip -4 -o addr show dev lo | grep -qw "$PK_SERVICE_IP/32"; then
    pk_die "$PK_SERVICE_IP is already on lo but no test node claims it; remove it (ip addr del $PK_SERVICE_IP/32 dev lo) or start with PK_NO_NODE=1"
  fi
  printf '%s\n' "$1" >"$PK_NODE_CLAIM"
}

# pk_node_refuse_if_taken DIR: dies when another DIR's node runs on this machine (up calls it before
# starting anything, and again when it claims the slot).
pk_node_refuse_if_taken() {
  local holder=""
  [[ -s $PK_NODE_CLAIM ]] && holder=$(cat "$PK_NODE_CLAIM")
  if [[ -n $holder ]] && pk_node_running "$holder"; then
    pk_die "a test node is already running on this machine, from $holder: only one node per machine \
(the kubelet's $PK_DEVICE_PLUGINS socket, $PK_SERVICE_IP on lo, the iptables guard). Stop it with \
tests/cluster/down $holder, or start this control plane without a node: PK_NO_NODE=1 tests/cluster/up $1"
  fi
}

# pk_node_running DIR: a process of DIR's node is still running.
pk_node_running() {
  local c
  for c in kubelet containerd scheduler forwarder; do
    pk_alive "$1/pids/$c.pid" && return 0
  done
  return 1
}

# pk_node_ip: the address of the interface of the default route (the kubelet refuses loopback).
pk_node_ip() {
  local dev
  dev=$(ip -4 -o route show default | awk '{for (i = 1; i < NF; i++) if ($i == "dev") {print $(i+1); exit}}')
  [[ -n $dev ]] || return 1
  ip -4 -o addr show dev "$dev" scope global | awk '{split($4, a, "/"); print a[1]; exit}'
}

# "${pk_in_node_cgroup[@]}" CMD...: runs CMD inside the node's cgroup v2 (the iptables guard lets
# nothing in it leave the loopback interface). An array, so that pk_start's setsid can run it.
# shellcheck disable=SC2016 # expanded by the inner bash
pk_in_node_cgroup=(bash -c 'echo $$ >"$0/cgroup.procs" && exec "$@"' "$PK_NODE_CGROUP")

# pk_node_shim_pids SOCKET: the pids of containerd shims serving that containerd.
pk_node_shim_pids() {
  local p
  for p in /proc/[0-9]*; do
    if tr '\0' ' ' 2>/dev/null <"$p/cmdline" | grep -qF -- "-address $1 "; then
      printf '%s\n' "${p#/proc/}"
    fi
  done
}

# --- network: 10.0.0.1 made local, the forwarder, the guard ------------------------------------
pk_node_guard_up() {
  local host_state=$1 node_ip=$2 kubelet_port=$3 comment="pullkeeper test node $dir"
  mkdir -p "$PK_NODE_CGROUP" /sys/fs/cgroup/unified/k8s.io
  : >"$host_state/guard"
  iptables -w -N "$PK_NODE_CHAIN_OUT"
  iptables -w -N "$PK_NODE_CHAIN_FWD"
  # The host may talk to Pods on the bridge (the kubelet's probes, the tests): those addresses live
  # in network namespaces the node made, on this machine.
  iptables -w -A "$PK_NODE_CHAIN_OUT" -o "$PK_NODE_BRIDGE" -s "$PK_NODE_POD_GATEWAY" -d "$PK_NODE_POD_CIDR" -m comment --comment "$comment" -j RETURN
  iptables -w -A "$PK_NODE_CHAIN_OUT" -o "$PK_NODE_BRIDGE" -s "$PK_SERVICE_IP" -d "$PK_NODE_POD_CIDR" -m comment --comment "$comment" -j RETURN
  # Traffic from the node's own processes and its containers (runc puts them under k8s.io) may only
  # use lo; so may anything aimed at the Service CIDR. Nothing may dial the node's address.
  iptables -w -A "$PK_NODE_CHAIN_OUT" -d "$PK_SERVICE_CIDR" ! -o lo -m comment --comment "$comment" -j REJECT
  iptables -w -A "$PK_NODE_CHAIN_OUT" -m cgroup --path "${PK_NODE_CGROUP#/sys/fs/cgroup/unified/}" ! -o lo -m comment --comment "$comment" -j REJECT
  iptables -w -A "$PK_NODE_CHAIN_OUT" -m cgroup --path k8s.io ! -o lo -m comment --comment "$comment" -j REJECT
  iptables -w -A "$PK_NODE_CHAIN_OUT" -d "$node_ip" -m cgroup --path "${PK_NODE_CGROUP#/sys/fs/cgroup/unified/}" -m comment --comment "$comment" -j REJECT
  iptables -w -A "$PK_NODE_CHAIN_OUT" -d "$node_ip" -m cgroup --path k8s.io -m comment --comment "$comment" -j REJECT
  iptables -w -A "$PK_NODE_CHAIN_OUT" -d "$node_ip" -p tcp -m multiport --dports "10250,$kubelet_port" -m comment --comment "$comment" -j REJECT
  # Pods on the bridge: nothing forwarded from or to them, nothing forwarded to the Service CIDR.
  iptables -w -A "$PK_NODE_CHAIN_FWD" -s "$PK_NODE_POD_CIDR" ! -d "$PK_NODE_POD_CIDR" -m comment --comment "$comment" -j REJECT
  iptables -w -A "$PK_NODE_CHAIN_FWD" -d "$PK_NODE_POD_CIDR" ! -s "$PK_NODE_POD_CIDR" -m comment --comment "$comment" -j REJECT
  iptables -w -A "$PK_NODE_CHAIN_FWD" -d "$PK_SERVICE_CIDR" -m comment --comment "$comment" -j REJECT
  iptables -w -I OUTPUT 1 -m comment --comment "$comment" -j "$PK_NODE_CHAIN_OUT"
  iptables -w -I FORWARD 1 -m comment --comment "$comment" -j "$PK_NODE_CHAIN_FWD"
  if command -v ip6tables >/dev/null; then
    ip6tables -w -N "$PK_NODE_CHAIN_OUT"
    ip6tables -w -A "$PK_NODE_CHAIN_OUT" -m cgroup --path "${PK_NODE_CGROUP#/sys/fs/cgroup/unified/}" ! -o lo -m comment --comment "$comment" -j REJECT
    ip6tables -w -A "$PK_NODE_CHAIN_OUT" -m cgroup --path k8s.io ! -o lo -m comment --comment "$comment" -j REJECT
    ip6tables -w -I OUTPUT 1 -m comment --comment "$comment" -j "$PK_NODE_CHAIN_OUT"
    ip6tables -w -N "$PK_NODE_CHAIN_FWD"
    ip6tables -w -A "$PK_NODE_CHAIN_FWD" -i "$PK_NODE_BRIDGE" -m comment --comment "$comment" -j REJECT
    ip6tables -w -A "$PK_NODE_CHAIN_FWD" -o "$PK_NODE_BRIDGE" -m comment --comment "$comment" -j REJECT
    ip6tables -w -I FORWARD 1 -m comment --comment "$comment" -j "$PK_NODE_CHAIN_FWD"
  fi
  # Only now, with the guard in place, make the Service address local.
  : >"$host_state/service-ip"
  ip addr add "$PK_SERVICE_IP/32" dev lo
}

pk_node_guard_down() {
  local tool chain parent
  for tool in iptables ip6tables; do
    command -v "$tool" >/dev/null || continue
    for chain in "$PK_NODE_CHAIN_OUT" "$PK_NODE_CHAIN_FWD"; do
      case $chain in "$PK_NODE_CHAIN_OUT") parent=OUTPUT ;; *) parent=FORWARD ;; esac
      while "$tool" -w -S "$parent" 2>/dev/null | grep -q -- "-j $chain\$"; do
        "$tool" -w -S "$parent" | grep -- "-j $chain\$" | head -1 | sed 's/^-A /-D /' |
          xargs -r "$tool" -w 2>/dev/null || break
      done
      if "$tool" -w -S "$chain" >/dev/null 2>&1; then
        "$tool" -w -F "$chain" && "$tool" -w -X "$chain"
      fi
    done
  done
  while ip -4 -o addr show dev lo | grep -qw "$PK_SERVICE_IP/32"; do
    ip addr del "$PK_SERVICE_IP/32" dev lo || break
  done
}

# --- containerd ------------------------------------------------------------------------------------
pk_node_write_containerd_config() {
  local node=$1
  mkdir -p "$node/containerd/root" "$node/containerd/state" "$node/containerd/opt" "$node/runc" \
    "$node/certs.d" "$node/cni/net.d" "$node/cni/ipam"
  cat >"$node/containerd.toml" <<EOF
# Written by tests/cluster/up: the test node's own containerd; nothing under /var/lib or /etc.
version = 2
root = "$node/containerd/root"
state = "$node/containerd/state"
disabled_plugins = ["io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.zfs",
  "io.containerd.tracing.processor.v1.otlp", "io.containerd.internal.v1.tracing"]

[grpc]
  address = "$dir/containerd.sock"

[ttrpc]
  address = "$dir/containerd.ttrpc.sock"

[debug]
  address = ""

[metrics]
  address = ""

[plugins."io.containerd.internal.v1.opt"]
  path = "$node/containerd/opt"

[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "$PK_SANDBOX_IMAGE"
  # No CAP_SYS_RESOURCE in this VM: without this every sandbox fails to set oom_score_adj.
  restrict_oom_score_adj = true
  disable_hugetlb_controller = true
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  netns_mounts_under_state_dir = true
  enable_selinux = false
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
        Root = "$node/runc"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "$node/cni/net.d"
  [plugins."io.containerd.grpc.v1.cri".registry]
    # One HOST:PORT/hosts.toml per plain-HTTP loopback registry (tests/peers/up writes them).
    # No credentials here, ever: only a Pod's imagePullSecrets may open a private registry.
    config_path = "$node/certs.d"
EOF
  # The Pod network, local only. The bridge gets the gateway address (10.88.0.1), and a Pod's
  # netns gets exactly one route besides its subnet: 10.0.0.1/32 via the bridge, the Service
  # address made local on lo, where forward.py takes it to the API server. No default route, no
  # masquerading: a Pod can reach the API server and other Pods' addresses, nothing else (a
  # connect to any other address fails in the Pod with "network unreachable"), and the guard
  # rejects anything forwarded. The kubelet's probes and the tests reach Pods on the bridge.
  cat >"$node/cni/net.d/10-pk-test.conflist" <<EOF
{
  "cniVersion": "1.0.0",
  "name": "pk-test",
  "plugins": [
    {
      "type": "bridge",
      "bridge": "$PK_NODE_BRIDGE",
      "isGateway": true,
      "isDefaultGateway": false,
      "ipMasq": false,
      "hairpinMode": false,
      "ipam": {
        "type": "host-local",
        "dataDir": "$node/cni/ipam",
        "ranges": [[{"subnet": "$PK_NODE_POD_CIDR", "gateway": "$PK_NODE_POD_GATEWAY"}]],
        "routes": [{"dst": "$PK_SERVICE_IP/32"}]
      }
    }
  ]
}
EOF
}

# pk_node_registry_hosts CERTS_D HOST:PORT...: plain HTTP for each loopback registry, pull and resolve
# only. Called by tests/peers/up once it knows the ports.
pk_node_registry_hosts() {
  local certs_d=$1 host
  shift
  for host in "$@"; do
    mkdir -p "$certs_d/$host"
    cat >"$certs_d/$host/hosts.toml" <<EOF
server = "http://$host"

[host."http://$host"]
  capabilities = ["pull", "resolve"]
EOF
  done
}

pk_ctr() { ctr --address "$dir/containerd.sock" --namespace k8s.io "$@"; }

# Readiness probes of pk_node_up (run through pk_wait_until).
pk_forwarder_ready() {
  [[ $(curl -fsS --max-time 5 --cacert "$pki/ca.crt" -H "Authorization: Bearer $admin_token" \
    "https://$PK_SERVICE_IP/readyz") == ok ]]
}
pk_containerd_ready() { pk_ctr version; }
pk_node_ready() {
  curl -fsS --max-time 5 --cacert "$pki/ca.crt" -H "Authorization: Bearer $admin_token" \
    "$server/api/v1/nodes/$PK_NODE_NAME" |
    python3 -c '
import json, sys
node = json.load(sys.stdin)
ready = {c["type"]: c["status"] for c in node["status"].get("conditions", [])}.get("Ready") == "True"
# The node-lifecycle controller lifts this taint once it has seen the node Ready.
tainted = any(t["key"] == "node.kubernetes.io/not-ready" for t in node["spec"].get("taints", []))
sys.exit(not ready or tainted)'
}
pk_scheduler_ready() { [[ $(curl -fsSk --max-time 5 "https://127.0.0.1:$scheduler_port/readyz") == ok ]]; }

pk_start_scheduler() {
  read -r scheduler_port < <(pk_free_ports 1)
  # shellcheck disable=SC2086 # extra flags split on purpose
  pk_start scheduler "$logs/scheduler.log" "$pids/scheduler.pid" "$bin" scheduler \
    --kubeconfig "$dir/kubeconfig" --leader-elect=false \
    --bind-address 127.0.0.1 --secure-port "$scheduler_port" --cert-dir "$dir/node/scheduler-pki" \
    --v 1 ${PK_SCHEDULER_EXTRA_ARGS:-}
}

# --- the image credential provider (PK_CREDENTIAL_PROVIDER=path to a pullkeeper binary) -----------
# The kubelet gets --image-credential-provider-config and --image-credential-provider-bin-dir: it
# execs `pullkeeper credential-provider --config DIR` for images on any host under
# $PK_CREDENTIAL_PROVIDER_DOMAIN (matchImages without a port, so no registry port is needed now).
# Tests put one registry file per host into the config dir, and give containerd the host as an
# alias of a loopback registry (certs.d/HOST/hosts.toml, `server = "http://127.0.0.1:PORT"`). The
# plugin appends one JSON line per invocation to invocations.log (no credential in it).
PK_CREDENTIAL_PROVIDER_DOMAIN=pullkeeper.test
PK_CREDENTIAL_PROVIDER_AUDIENCE=credential-broker.pullkeeper.test
# The node may request ServiceAccount tokens only for audiences it is granted
# (ServiceAccountNodeAudienceRestriction): this role grants the plugin's one.
pk_node_credential_provider_audience_rbac() {
  local api=$server/apis/rbac.authorization.k8s.io/v1 body
  for body in \
    '{"apiVersion":"rbac.authorization.k8s.io/v1","kind":"ClusterRole","metadata":{"name":"pullkeeper-test-credential-provider-audience"},"rules":[{"apiGroups":[""],"resources":["'"$PK_CREDENTIAL_PROVIDER_AUDIENCE"'"],"verbs":["request-serviceaccounts-token-audience"]}]}' \
    '{"apiVersion":"rbac.authorization.k8s.io/v1","kind":"ClusterRoleBinding","metadata":{"name":"pullkeeper-test-credential-provider-audience"},"roleRef":{"apiGroup":"rbac.authorization.k8s.io","kind":"ClusterRole","name":"pullkeeper-test-credential-provider-audience"},"subjects":[{"apiGroup":"rbac.authorization.k8s.io","kind":"Group","name":"system:nodes"}]}'; do
    local kind=clusterroles
    [[ $body == *ClusterRoleBinding* ]] && kind=clusterrolebindings
    # 201 created, 409 already there (a DIR whose etcd kept it from an earlier up).
    local status
    status=$(curl -sS -o /dev/null -w '%{http_code}' --max-time 10 --cacert "$pki/ca.crt" \
      -H "Authorization: Bearer $admin_token" -H 'Content-Type: application/json' \
      -X POST --data "$body" "$api/$kind") || status=000
    [[ $status == 201 || $status == 409 ]] ||
      pk_die "creating the node's token-audience RBAC ($kind) failed: HTTP $status"
  done
}
pk_node_credential_provider() {
  local cp=$1/credential-provider
  [[ -x $PK_CREDENTIAL_PROVIDER ]] || pk_die "PK_CREDENTIAL_PROVIDER=$PK_CREDENTIAL_PROVIDER is not an executable (build pullkeeper first)"
  mkdir -p "$cp/bin" "$cp/config"
  # The provider's name is the executable's name in the bin dir. A copy: a rebuild while the
  # node runs must not swap the binary under a running kubelet's exec.
  cp -f "$PK_CREDENTIAL_PROVIDER" "$cp/bin/pullkeeper"
  : >>"$cp/invocations.log"
  cat >"$cp/config.yaml" <<EOF
apiVersion: kubelet.config.k8s.io/v1
kind: CredentialProviderConfig
providers:
  - name: pullkeeper
    apiVersion: credentialprovider.kubelet.k8s.io/v1
    matchImages: ["*.$PK_CREDENTIAL_PROVIDER_DOMAIN"]
    # Used only when a response gives no cacheDuration (pullkeeper always gives one).
    defaultCacheDuration: 1m
    args: [credential-provider, --config, $cp/config]
    # KEP-4412: the kubelet hands the plugin the pulling Pod's own ServiceAccount token for this
    # audience (auth: podServiceAccountToken of the http provider presents it to a broker).
    tokenAttributes:
      serviceAccountTokenAudience: $PK_CREDENTIAL_PROVIDER_AUDIENCE
      # Answers depend on the ServiceAccount only: cached per ServiceAccount, not per Pod token.
      cacheType: ServiceAccount
      requireServiceAccount: false
    env:
      - name: PULLKEEPER_CREDENTIAL_PROVIDER_LOG
        value: $cp/invocations.log
EOF
  printf '%s' "--image-credential-provider-config $cp/config.yaml --image-credential-provider-bin-dir $cp/bin"
}

# --- up --------------------------------------------------------------------------------------------
pk_node_up() {
  local node=$dir/node host_state=$dir/node/host-state node_ip kubelet_port healthz_port s
  local t_node=$SECONDS
  [[ $(id -u) -eq 0 ]] || pk_die "the test node needs root (mounts, cgroups, iptables); PK_NO_NODE=1 starts the control plane alone"
  for tool in containerd containerd-shim-runc-v2 runc ctr iptables ip mount umount; do
    command -v "$tool" >/dev/null || pk_die "$tool is required for the test node (tests/prereqs.sh installs it)"
  done
  for plugin in bridge host-local loopback; do
    [[ -x /usr/lib/cni/$plugin ]] || pk_die "/usr/lib/cni/$plugin is missing (Debian containernetworking-plugins; tests/prereqs.sh installs it)"
  done
  [[ -d /sys/fs/cgroup/unified ]] || pk_die "no cgroup v2 hierarchy at /sys/fs/cgroup/unified: the node's network guard needs it"
  node_ip=$(pk_node_ip) || true
  [[ -n $node_ip ]] || pk_die "no IPv4 address on the default route's interface: the kubelet needs a non-loopback node IP"
  if pk_node_running "$dir"; then
    pk_die "the node of $dir is already running; run tests/cluster/down $dir first"
  fi

  pk_node_claim "$dir"
  mkdir -p "$host_state" "$node"
  # What existed before, so that down removes only what the node created.
  for s in "${PK_NODE_SYSCTLS[@]}"; do
    [[ -e /proc/sys/${s//.//} ]] && printf '%s=%s\n' "$s" "$(sysctl -n "$s")"
  done >"$host_state/sysctls"
  [[ -e /var/lib/kubelet ]] || : >"$host_state/created-var-lib-kubelet"
  [[ -e /run/containerd ]] || : >"$host_state/created-run-containerd"
  [[ -e /run/containerd/s ]] || : >"$host_state/created-run-containerd-s"
  [[ -e /var/lib/cni ]] || : >"$host_state/created-var-lib-cni"
  # The kubelet links every container's log into /var/log/containers, whatever podLogsDir says.
  [[ -e /var/log/containers ]] || : >"$host_state/created-var-log-containers"

  read -r kubelet_port healthz_port < <(pk_free_ports 2)
  pk_node_guard_up "$host_state" "$node_ip" "$kubelet_port"

  # The forwarder makes https://10.0.0.1:443 (the `kubernetes` Service) the loopback API server.
  pk_start forwarder "$logs/forwarder.log" "$pids/forwarder.pid" \
    python3 "$here/forward.py" "$PK_SERVICE_IP" 443 127.0.0.1 "$api_port"
  if ! pk_wait_until 20 "$pids/forwarder.pid" pk_forwarder_ready; then
    pk_tail forwarder "$logs/forwarder.log"
    pk_die "the forwarder on $PK_SERVICE_IP:443 did not reach the API server"
  fi

  # --- containerd, with the pause image imported (no registry, no credentials) ---
  pk_node_write_containerd_config "$node"
  pk_start containerd "$logs/containerd.log" "$pids/containerd.pid" \
    "${pk_in_node_cgroup[@]}" containerd --config "$node/containerd.toml" --log-level warn
  if ! pk_wait_until 60 "$pids/containerd.pid" pk_containerd_ready; then
    pk_tail containerd "$logs/containerd.log"
    pk_die "containerd did not start"
  fi
  local sleeper
  sleeper=$("$here/build" pk-sleep)
  rm -rf "$node/pause-image"
  python3 "$here/../peers/make_oci_image.py" "$node/pause-image" v1 "$sleeper" "$node/pause-image.tar" >/dev/null
  if ! pk_ctr images import --base-name "${PK_SANDBOX_IMAGE%:*}" "$node/pause-image.tar" >>"$logs/containerd-import.log" 2>&1; then
    pk_tail "ctr images import" "$logs/containerd-import.log"
    pk_die "importing the pause image failed"
  fi

  # --- the kubelet ---
  mkdir -p "$node/pki" "$node/kubelet" "$node/pod-logs" "$node/volume-plugins"
  if [[ ! -s $node/pki/node.crt ]]; then
    openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
      -keyout "$node/pki/node.key" -out "$node/pki/node.csr" \
      -subj "/O=system:nodes/CN=system:node:$PK_NODE_NAME" 2>/dev/null
    printf 'basicConstraints=CA:FALSE\nkeyUsage=digitalSignature\nextendedKeyUsage=clientAuth\n' >"$node/pki/node.ext"
    openssl x509 -req -in "$node/pki/node.csr" -CA "$pki/ca.crt" -CAkey "$pki/ca.key" -CAcreateserial \
      -days 3650 -extfile "$node/pki/node.ext" -out "$node/pki/node.crt" 2>/dev/null
    chmod 600 "$node/pki/node.key"
  fi
  cat >"$node/kubelet.kubeconfig" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: pk-test
  cluster:
    server: $server
    certificate-authority: $pki/ca.crt
users:
- name: $PK_NODE_NAME
  user:
    client-certificate: $node/pki/node.crt
    client-key: $node/pki/node.key
contexts:
- name: pk-test
  context:
    cluster: pk-test
    user: $PK_NODE_NAME
current-context: pk-test
EOF
  cat >"$node/kubelet.yaml" <<EOF
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
# cgroup v1 on this machine kind: 1.37 refuses it unless told otherwise.
failCgroupV1: false
cgroupDriver: cgroupfs
cgroupsPerQOS: false
enforceNodeAllocatable: []
failSwapOn: false
# Else the kubelet adds iptables chains (one with a DROP rule) to the host.
makeIPTablesUtilChains: false
volumePluginDir: $node/volume-plugins
podLogsDir: $node/pod-logs
address: 127.0.0.1
port: $kubelet_port
healthzBindAddress: 127.0.0.1
healthzPort: $healthz_port
readOnlyPort: 0
authentication:
  anonymous:
    enabled: false
  webhook:
    enabled: false
  x509:
    clientCAFile: $pki/ca.crt
authorization:
  mode: AlwaysAllow
# How often every Pod is synced, and with it how soon a ConfigMap edit reaches its volume (the
# kubelet's symlink swap). The default 1m would make each reload test wait a minute or more.
syncFrequency: 10s
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
evictionHard: {}
containerRuntimeEndpoint: unix://$dir/containerd.sock
# Pods get no nameserver: nothing in them may resolve names off this machine.
resolvConf: ""
rotateCertificates: false
serverTLSBootstrap: false
registerNode: true
EOF
  local credential_provider_args=""
  if [[ -n ${PK_CREDENTIAL_PROVIDER:-} ]]; then
    credential_provider_args=$(pk_node_credential_provider "$node")
    pk_node_credential_provider_audience_rbac
  fi
  # shellcheck disable=SC2086 # extra flags split on purpose
  pk_start kubelet "$logs/kubelet.log" "$pids/kubelet.pid" \
    "${pk_in_node_cgroup[@]}" "$bin" kubelet --config "$node/kubelet.yaml" --kubeconfig "$node/kubelet.kubeconfig" \
    --root-dir "$node/kubelet" --hostname-override "$PK_NODE_NAME" --node-ip "$node_ip" \
    --v 1 $credential_provider_args ${PK_KUBELET_EXTRA_ARGS:-}
  local t_kubelet=$SECONDS rc=0
  pk_wait_until 120 "$pids/kubelet.pid" pk_node_ready || rc=$?
  if [[ $rc -ne 0 ]]; then
    pk_tail kubelet "$logs/kubelet.log"
    pk_die "node $PK_NODE_NAME did not become Ready"
  fi
  pk_log "node $PK_NODE_NAME Ready $((SECONDS - t_kubelet)) s after the kubelet started ($((SECONDS - t_node)) s for the whole node)"

  # --- kube-scheduler (so Deployments' Pods land on the node) ---
  # Its secure port serves only /readyz to us (always allowed, no authentication needed).
  pk_start_with_retry scheduler 60 pk_start_scheduler pk_scheduler_ready

  cat >>"$dir/env" <<EOF
export PK_NODE_NAME=$PK_NODE_NAME
export PK_NODE_POD_LOGS_DIR=$node/pod-logs
export PK_NODE_KUBELET_ROOT=$node/kubelet
export PK_NODE_CONTAINERD_SOCK=$dir/containerd.sock
export PK_NODE_CERTS_D=$node/certs.d
EOF
  if [[ -n ${PK_CREDENTIAL_PROVIDER:-} ]]; then
    cat >>"$dir/env" <<EOF
export PK_CREDENTIAL_PROVIDER_DOMAIN=$PK_CREDENTIAL_PROVIDER_DOMAIN
export PK_CREDENTIAL_PROVIDER_AUDIENCE=$PK_CREDENTIAL_PROVIDER_AUDIENCE
export PK_CREDENTIAL_PROVIDER_CONFIG_DIR=$node/credential-provider/config
export PK_CREDENTIAL_PROVIDER_LOG=$node/credential-provider/invocations.log
EOF
  fi
}

# --- down ------------------------------------------------------------------------------------------
# pk_node_down DIR: stops the node of DIR and undoes every host change it made. Safe to run twice,
# and on a DIR whose node never started or half started.
pk_node_down() {
  local d=$1 node=$1/node host_state=$1/node/host-state sock=$1/containerd.sock id p line s want
  pk_stop "$d/pids/scheduler.pid"
  pk_stop "$d/pids/kubelet.pid"
  # Every container of this node: kill and delete through runc (the kubelet is gone, so nobody
  # restarts them), then containerd, then the shims it left behind.
  if [[ -d $node/runc/k8s.io ]] && command -v runc >/dev/null; then
    while read -r id; do
      [[ -n $id ]] || continue
      runc --root "$node/runc/k8s.io" delete --force "$id" >/dev/null 2>&1 || true
    done < <(runc --root "$node/runc/k8s.io" list -q 2>/dev/null)
  fi
  pk_stop "$d/pids/containerd.pid"
  local shims
  mapfile -t shims < <(pk_node_shim_pids "$sock")
  if ((${#shims[@]})); then
    kill -TERM "${shims[@]}" 2>/dev/null || true
    for _ in $(seq 50); do
      mapfile -t shims < <(pk_node_shim_pids "$sock")
      ((${#shims[@]})) || break
      sleep 0.1
    done
    if ((${#shims[@]})); then kill -KILL "${shims[@]}" 2>/dev/null || true; fi
  fi
  pk_stop "$d/pids/forwarder.pid"

  # Mounts under DIR (overlay rootfs, shm, netns, the kubelet's bind mount and token tmpfs),
  # deepest first.
  if [[ -d $node ]]; then
    for _ in 1 2 3; do
      while read -r line; do
        umount "$line" 2>/dev/null || umount -l "$line" 2>/dev/null || true
      done < <(awk -v p="$d/" 'index($5, p) == 1 {print $5}' /proc/self/mountinfo | awk '{print length, $0}' | sort -rn | cut -d' ' -f2-)
      awk -v p="$d/" 'index($5, p) == 1 {found = 1} END {exit !found}' /proc/self/mountinfo || break
    done
  fi

  if [[ ! -d $host_state ]]; then
    if [[ -s $PK_NODE_CLAIM && $(cat "$PK_NODE_CLAIM") == "$d" ]]; then rm -f "$PK_NODE_CLAIM"; fi
    return 0
  fi
  rm -f "$PK_DEVICE_PLUGINS/kubelet.sock"
  if [[ -e $host_state/created-var-lib-kubelet ]]; then rm -rf /var/lib/kubelet; fi
  if [[ -e $host_state/created-run-containerd-s ]]; then rm -rf /run/containerd/s; fi
  if [[ -e $host_state/created-run-containerd ]]; then rmdir /run/containerd 2>/dev/null || true; fi
  if [[ -e $host_state/created-var-lib-cni ]]; then rm -rf /var/lib/cni; fi
  # The kubelet's links there point into DIR; remove those, and the directory if the node made it.
  if [[ -d /var/log/containers ]]; then
    for p in /var/log/containers/*.log; do
      [[ -L $p && $(readlink "$p") == "$d/"* ]] && rm -f "$p"
    done
    if [[ -e $host_state/created-var-log-containers ]]; then rmdir /var/log/containers 2>/dev/null || true; fi
  fi
  ip link del "$PK_NODE_BRIDGE" 2>/dev/null || true
  pk_node_guard_down
  # runc leaves an empty k8s.io cgroup in every hierarchy; rmdir removes only empty ones.
  for p in /sys/fs/cgroup/*/k8s.io "$PK_NODE_CGROUP"; do
    if [[ -d $p ]]; then find "$p" -depth -type d -exec rmdir {} \; 2>/dev/null || true; fi
  done
  if [[ -s $host_state/sysctls ]]; then
    while IFS='=' read -r s want; do
      [[ $(sysctl -n "$s" 2>/dev/null) == "$want" ]] || sysctl -q -w "$s=$want" >/dev/null || pk_log "cannot restore $s=$want"
    done <"$host_state/sysctls"
  fi
  rm -rf "$host_state"
  if [[ -s $PK_NODE_CLAIM && $(cat "$PK_NODE_CLAIM") == "$d" ]]; then rm -f "$PK_NODE_CLAIM"; fi
  return 0
}
