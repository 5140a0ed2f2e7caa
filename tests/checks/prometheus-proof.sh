#!/usr/bin/env bash
# Proof against a real Prometheus: runs pullkeeper on the test control plane with three registries
# (an http provider whose local endpoint answers a one-hour token, verified against a local /v2/
# endpoint; an http provider whose endpoint refuses connections, so failures are counted; a static
# login whose Secret name is taken by a foreign Secret in one namespace), lets Debian's prometheus scrape it on loopback with
# dashboards/alerts.yaml loaded, and then requires every dashboard query to return series, every
# alert expression to evaluate with series behind its metrics, and every loaded alert rule to be
# healthy (dashboards/prove_queries.py).
#
# Uses the control plane of the current test run ($KUBECONFIG from tests/cluster/up's env file, as
# tests/run-all.sh exports it); without one it starts its own (tests/cluster/up) and stops it again.
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd -P)"
cd "$root"
# shellcheck source=tests/cluster/lib.sh
. tests/cluster/lib.sh

fail() { echo "prometheus-proof.sh: FAIL: $*" >&2; exit 1; }
say() { echo "prometheus-proof.sh: $*"; }

if ! command -v prometheus >/dev/null 2>&1; then
  say "installing Debian's prometheus package"
  { apt-get update -qq >/dev/null && apt-get install -y -qq --no-install-recommends prometheus >/dev/null; } \
    || fail "could not install the prometheus package"
fi
for tool in kubectl curl python3 cargo promtool; do
  command -v "$tool" >/dev/null 2>&1 || fail "$tool is required"
done

work="$(mktemp -d "${TMPDIR:-/tmp}/pullkeeper-prometheus-proof.XXXXXX")"
own_cluster=""
pids=()
ns_prefix="pkproof-$(python3 -c 'import secrets; print(secrets.token_hex(3))')"
cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  local pid
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  if [[ -n ${KUBECONFIG:-} ]]; then
    kubectl delete namespace "$ns_prefix-a" "$ns_prefix-b" --wait=false >/dev/null 2>&1 || true
  fi
  if [[ -n $own_cluster ]]; then tests/cluster/down "$own_cluster" >/dev/null 2>&1 || true; fi
  if [[ $rc -ne 0 ]]; then say "logs kept in $work"; else rm -rf "$work"; fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# --- control plane -------------------------------------------------------------------------------
pk_use_or_start_cluster "$work"

# --- pullkeeper binary ---------------------------------------------------------------------------
cargo build --bin pullkeeper || fail "cargo build --bin pullkeeper failed"
bin="${CARGO_TARGET_DIR:-$root/target}/debug/pullkeeper"
[[ -x $bin ]] || fail "no pullkeeper binary at $bin"

# --- peers: a token endpoint and a /v2/ endpoint accepting its login; a port nobody listens on ---
read -r v2_port dead_port admin_port prom_port < <(pk_free_ports 4)
cat >"$work/v2.py" <<'PY'
import base64, http.server, json, sys
want = "Basic " + base64.b64encode(b"proof:proof-password").decode()
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        if self.path == "/token":
            body = json.dumps({"token": "proof-password", "expires_in": 3600}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            return
        ok = self.path.rstrip("/") == "/v2" and self.headers.get("Authorization") == want
        self.send_response(200 if ok else 401)
        if not ok:
            self.send_header("WWW-Authenticate", 'Basic realm="proof"')
        self.send_header("Docker-Distribution-API-Version", "registry/2.0")
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"{}")
    def log_message(self, *a):
        pass
http.server.ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), H).serve_forever()
PY
python3 "$work/v2.py" "$v2_port" >"$work/v2.log" 2>&1 &
pids+=($!)

# --- namespaces and config -----------------------------------------------------------------------
kubectl create namespace "$ns_prefix-a" >/dev/null || fail "cannot create namespace $ns_prefix-a"
kubectl create namespace "$ns_prefix-b" >/dev/null || fail "cannot create namespace $ns_prefix-b"
# A same-named Secret pullkeeper does not own: it must be counted as foreign and left alone.
kubectl -n "$ns_prefix-b" create secret generic proof-foreign-pull --from-literal=k=v >/dev/null

mkdir -p "$work/config" "$work/secrets"
printf 'proof-password' >"$work/secrets/password"
cat >"$work/config/proof-http.yaml" <<YAML
provider:
  type: http
  url: http://127.0.0.1:$v2_port/token
  timeout: 2s
  response:
    username:
      value: proof
    password: /token
    expiresIn: /expires_in
servers: ["127.0.0.1:$v2_port"]
secretName: proof-http-pull
namespaces:
  include: ["$ns_prefix-*"]
verify:
  scheme: http
  timeout: 5s
YAML
cat >"$work/config/proof-failing.yaml" <<YAML
provider:
  type: http
  url: http://127.0.0.1:$dead_port/token
  timeout: 2s
  response:
    username:
      value: proof
    password: /token
servers: ["127.0.0.1:$dead_port"]
secretName: proof-failing-pull
namespaces:
  include: ["$ns_prefix-*"]
refresh:
  minInterval: 1s
  backoffInitial: 1s
  backoffMax: 2s
YAML
cat >"$work/config/proof-foreign.yaml" <<YAML
provider:
  type: static
  username:
    value: proof
  password:
    file: $work/secrets/password
servers: ["127.0.0.1:$v2_port"]
secretName: proof-foreign-pull
namespaces:
  include: ["$ns_prefix-*"]
YAML
"$bin" check --config "$work/config" >"$work/check.log" 2>&1 \
  || fail "pullkeeper check rejects the proof config: $(cat "$work/check.log")"

# --- pullkeeper ----------------------------------------------------------------------------------
# POD_NAME/POD_NAMESPACE as the Deployment sets them: pullkeeper campaigns for its Lease.
POD_NAME=pullkeeper-proof-0 POD_NAMESPACE="$ns_prefix-a" \
  "$bin" run --config "$work/config" --kubeconfig "$KUBECONFIG" --admin-addr "127.0.0.1:$admin_port" \
  --log-format json --reload-interval 1s --pod-recovery observe --recovery-interval 1s \
  >"$work/pullkeeper.log" 2>&1 &
pk_pid=$!
pids+=("$pk_pid")
for _ in $(seq 1 60); do
  curl -fsS "http://127.0.0.1:$admin_port/readyz" >/dev/null 2>&1 && break
  kill -0 "$pk_pid" 2>/dev/null || fail "pullkeeper exited: $(tail -5 "$work/pullkeeper.log")"
  sleep 1
done
curl -fsS "http://127.0.0.1:$admin_port/readyz" >/dev/null || fail "pullkeeper not ready after 60 s"
# A config change, so that a reload is counted too.
printf '# changed\n' >>"$work/config/proof-foreign.yaml"

# --- prometheus ----------------------------------------------------------------------------------
cat >"$work/prometheus.yml" <<YAML
global:
  scrape_interval: 1s
  evaluation_interval: 1s
rule_files:
  - $root/dashboards/alerts.yaml
scrape_configs:
  - job_name: pullkeeper
    static_configs:
      - targets: ["127.0.0.1:$admin_port"]
YAML
promtool check config "$work/prometheus.yml" >/dev/null || fail "prometheus config invalid"
prometheus --config.file "$work/prometheus.yml" --web.listen-address "127.0.0.1:$prom_port" \
  --storage.tsdb.path "$work/tsdb" --log.level warn >"$work/prometheus.log" 2>&1 &
pids+=($!)
prom="http://127.0.0.1:$prom_port"
for _ in $(seq 1 30); do
  curl -fsS "$prom/-/ready" >/dev/null 2>&1 && break
  sleep 1
done
curl -fsS "$prom/-/ready" >/dev/null || fail "prometheus not ready: $(tail -5 "$work/prometheus.log")"

# Enough scrapes for the rate() windows, and time for the failing registry to retry a few times.
sleep 20
# What this scenario must show: the Lease won; 2 namespaces served by proof-http (token valid ~1 h, verified),
# the foreign Secret counted, the dead endpoint counted as unreachable, the config change reloaded.
python3 dashboards/prove_queries.py "$prom" \
  'max(pullkeeper_registries_configured) == 3' \
  'max(pullkeeper_leader) == 1' \
  'max(pullkeeper_managed_secrets{registry="proof-http"}) == 2' \
  'max(pullkeeper_managed_service_accounts{registry="proof-http"}) == 2' \
  'max(pullkeeper_foreign_secrets{registry="proof-foreign"}) == 1' \
  'max(pullkeeper_managed_secrets{registry="proof-foreign"}) == 1' \
  'max(pullkeeper_credential_expiry_timestamp_seconds{registry="proof-http"}) - time() > 3000' \
  'sum(pullkeeper_verifications_total{registry="proof-http",result="success"}) > 0' \
  'sum(pullkeeper_refresh_failures_total{registry="proof-failing",category="unreachable"}) > 0' \
  'sum(pullkeeper_provider_errors_total{provider="http",category="unreachable"}) > 0' \
  'sum(pullkeeper_writes_total{kind="secret",outcome="success"}) > 0' \
  'sum(pullkeeper_config_reloads_total{result="success"}) >= 2' \
  'count(pullkeeper_pods_stuck{registry="proof-http"}) == 2' \
  'max(pullkeeper_pods_stuck) == 0' \
  'sum(pullkeeper_sweeps_total{result="success"}) > 0' \
  || fail "dashboard queries or alert expressions do not hold against real data (logs in $work)"
say "ok"
