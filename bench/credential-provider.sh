#!/usr/bin/env bash
# bench/credential-provider.sh BIN: the cost of one `pullkeeper credential-provider` invocation —
# what the kubelet pays on each cache miss — for the static, http and ECR providers. Each
# provider's registry file is alone in its directory; every run is a fresh process reading one
# CredentialProviderRequest, as the kubelet execs it. Prints, per provider, the median and the
# maximum of RUNS runs (default 15) of wall time (bash's EPOCHREALTIME around the exec) and peak RSS
# (`/usr/bin/time -f '%M'`).
#
# Needs PK_MOTO_URL (moto_server, from tests/peers/up's peers.env) for ECR; the http provider's
# broker is a small Python server on loopback started here. Example:
#   . /tmp/pk/peers.env && bench/credential-provider.sh target/release/pullkeeper
set -euo pipefail
bin=$(readlink -f "${1:?usage: $0 PULLKEEPER_BINARY}")
runs=${RUNS:-15}
: "${PK_MOTO_URL:?PK_MOTO_URL is not set: source peers.env of the test platform (tests/peers/up)}"
[[ -x /usr/bin/time ]] || { echo "/usr/bin/time is required (Debian: time)" >&2; exit 2; }

work=$(mktemp -d "${TMPDIR:-/tmp}/pk-cp-bench.XXXXXX")
broker_pid=""
cleanup() {
  [[ -n $broker_pid ]] && kill "$broker_pid" 2>/dev/null
  rm -rf "$work"
}
trap cleanup EXIT

printf 'bench-password' >"$work/password"
mkdir -p "$work/static" "$work/http" "$work/ecr"
cat >"$work/static/static.yaml" <<EOF
provider:
  type: static
  username: {value: robot}
  password: {file: $work/password}
servers: [registry.example]
secretName: static-pull
EOF

# The broker: answers every GET with a login and expires_in.
port_file=$work/broker.port
python3 - "$port_file" <<'PY' &
import http.server, json, sys
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = json.dumps({"username": "robot", "password": "bench-broker-password", "expires_in": 3600}).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *args):
        pass
server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), H)
open(sys.argv[1], "w").write(str(server.server_address[1]))
server.serve_forever()
PY
broker_pid=$!
for _ in $(seq 50); do [[ -s $port_file ]] && break; sleep 0.1; done
[[ -s $port_file ]] || { echo "the broker did not start" >&2; exit 1; }
cat >"$work/http/http.yaml" <<EOF
provider:
  type: http
  url: http://127.0.0.1:$(cat "$port_file")/token
  response: {username: /username, password: /password, expiresIn: /expires_in}
servers: [registry.example]
secretName: http-pull
EOF

cat >"$work/ecr/ecr.yaml" <<EOF
provider:
  type: ecr
  regions: [us-east-1]
  endpointUrl: $PK_MOTO_URL
secretName: ecr-pull
EOF

request() {
  printf '{"apiVersion":"credentialprovider.kubelet.k8s.io/v1","kind":"CredentialProviderRequest","image":"%s"}' "$1"
}

# measure NAME IMAGE: RUNS invocations; prints the median and max wall ms and peak RSS MiB.
measure() {
  local name=$1 image=$2 i out
  : >"$work/$name.times"
  for i in $(seq "$runs"); do
    request "$image" >"$work/request.json"
    # Wall time from bash's microsecond clock around the whole exec (GNU time counts in 10 ms
    # steps); peak RSS from GNU time.
    local started=$EPOCHREALTIME
    if ! AWS_ACCESS_KEY_ID=AKIAPULLKEEPERBENCH01 AWS_SECRET_ACCESS_KEY=bench-secret AWS_REGION=us-east-1 \
      /usr/bin/time -o "$work/time.out" -f '%M' "$bin" credential-provider --config "$work/$name" \
      <"$work/request.json" >"$work/response.json" 2>"$work/stderr"; then
      echo "$name: the invocation failed: $(cat "$work/stderr")" >&2
      exit 1
    fi
    local ended=$EPOCHREALTIME
    out="$(python3 -c 'import sys; print(float(sys.argv[2]) - float(sys.argv[1]))' "$started" "$ended") $(tail -1 "$work/time.out")"
    # Every answer must carry a login for the image's host.
    python3 -c 'import json,sys; r=json.load(open(sys.argv[1])); assert r["auth"], r["auth"].keys()' "$work/response.json"
    echo "$out" >>"$work/$name.times"
  done
  python3 - "$name" "$work/$name.times" "$work/response.json" <<'PY'
import json, statistics, sys
name, path = sys.argv[1], sys.argv[2]
rows = [line.split() for line in open(path) if line.strip()]
wall = [float(w) * 1000 for w, _ in rows]
rss = [int(k) / 1024 for _, k in rows]
r = json.load(open(sys.argv[3]))
print(f"{name:7} runs {len(rows):3}  wall median {statistics.median(wall):6.1f} ms  max {max(wall):6.1f} ms"
      f"  peak RSS median {statistics.median(rss):5.1f} MiB  max {max(rss):5.1f} MiB"
      f"  cacheDuration {r['cacheDuration']}  auth keys {list(r['auth'])}")
PY
}

echo "binary: $bin ($(du -h "$bin" | cut -f1)), $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg)"
measure static registry.example/team/app:v1
measure http registry.example/team/app:v1
measure ecr 123456789012.dkr.ecr.us-east-1.amazonaws.com/team/app:v1
