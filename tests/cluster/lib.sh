# Shell helpers shared by tests/cluster/{up,down,build} and tests/peers/{up,down}. Sourced, not run.
# shellcheck shell=bash

pk_log() { printf '%s %s\n' "[$(date -u +%H:%M:%S)]" "$*" >&2; }
pk_die() { pk_log "error: $*"; exit 1; }

# pk_with_progress LABEL TOTAL LOG CMD...: runs CMD with its output in LOG and, every
# ${PK_PROGRESS_EVERY:-10} s while it runs, says how long it has run and how many lines it printed
# so far (`go build -v` prints one per package compiled: "412 of about 1890 packages"; TOTAL may be
# empty). A long build is then never silent. Returns CMD's status; on failure the caller shows LOG.
pk_with_progress() {
  local label=$1 total=$2 log=$3 start=$SECONDS pid rc=0 i
  shift 3
  "$@" >"$log" 2>&1 &
  pid=$!
  while pk_running "$pid"; do
    for ((i = 0; i < ${PK_PROGRESS_EVERY:-10}; i++)); do
      pk_running "$pid" || break
      sleep 1
    done
    pk_running "$pid" || break
    pk_log "$label: $((SECONDS - start)) s so far, $(wc -l <"$log") ${total:+of about $total }packages compiled"
  done
  wait "$pid" || rc=$?
  return "$rc"
}

# pk_heartbeat LABEL CMD...: runs CMD; when its output is not a terminal (a CI log, a pipe), says
# "LABEL: still running" with the time so far and CMD's last line whenever CMD has printed nothing
# for ${PK_HEARTBEAT_AFTER:-10} s (cargo prints one line per crate it starts, and nothing while
# the last big ones compile). On a terminal the tools show their own progress bars: no change.
pk_heartbeat() {
  local label=$1 stamp ticker rc start=$SECONDS
  shift
  if [[ -t 1 && -t 2 ]]; then
    "$@"
    return
  fi
  stamp=$(mktemp "${TMPDIR:-/tmp}/pk-heartbeat.XXXXXX")
  (
    while sleep 2; do
      if (($(date +%s) - $(stat -c %Y "$stamp") >= ${PK_HEARTBEAT_AFTER:-10})); then
        pk_log "$label: still running, $((SECONDS - start)) s so far (last: $(tail -c 160 "$stamp"))"
        touch "$stamp"
      fi
    done
  ) &
  ticker=$!
  # The status travels through a file: the pipeline's own would stop a `set -e` caller here.
  {
    if "$@" 2>&1; then rc=0; else rc=$?; fi
    echo "$rc" >"$stamp.rc"
  } | while IFS= read -r line; do
    printf '%s\n' "$line"
    printf '%s' "$line" >"$stamp"
  done
  rc=$(cat "$stamp.rc" 2>/dev/null || echo 1)
  kill "$ticker" 2>/dev/null || true
  wait "$ticker" 2>/dev/null || true
  rm -f "$stamp" "$stamp.rc"
  return "$rc"
}

# The cache for the control-plane binary (outside any clone, so a fresh clone reuses it).
pk_cache_dir() { printf '%s\n' "${PK_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/pullkeeper}"; }

# pk_free_ports N: prints N distinct loopback TCP ports that were free a moment ago. The caller must
# still cope with losing a race for one of them (every start below retries on "address in use").
pk_free_ports() {
  python3 - "$1" <<'EOF'
import socket, sys
socks = []
for _ in range(int(sys.argv[1])):
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.bind(("127.0.0.1", 0))
    socks.append(s)
print(" ".join(str(s.getsockname()[1]) for s in socks))
EOF
}

# pk_start NAME LOGFILE PIDFILE CMD...: starts CMD detached (own session, so a Ctrl-C aimed at the
# caller does not reach it; `down` stops it by pid), appending to LOGFILE, and records its pid in
# PIDFILE and the process's start time in PIDFILE.start (so a recycled pid is never signalled).
pk_start() {
  local name=$1 log=$2 pidfile=$3 pid
  shift 3
  printf '\n===== %s start %s: %s\n' "$name" "$(date -u +%FT%TZ)" "$*" >>"$log"
  setsid "$@" </dev/null >>"$log" 2>&1 &
  pid=$!
  echo "$pid" >"$pidfile"
  pk_start_time "$pid" >"$pidfile.start" || true
}

# pk_start_time PID: the process's start time in clock ticks since boot (/proc/PID/stat field 22).
pk_start_time() {
  local stat fields
  stat=$(cat "/proc/$1/stat" 2>/dev/null) || return 1
  read -r -a fields <<<"${stat##*) }"
  printf '%s\n' "${fields[19]}"
}

# pk_running PID: the process exists and is not a zombie (a child that died but was not reaped yet
# still answers kill -0).
pk_running() {
  local stat
  kill -0 "$1" 2>/dev/null || return 1
  stat=$(cat "/proc/$1/stat" 2>/dev/null) || return 1
  stat=${stat##*) }
  [[ ${stat:0:1} != Z ]]
}

# pk_alive PIDFILE: the process recorded in PIDFILE is running and is the one pk_start started.
pk_alive() {
  local pid
  [[ -s $1 ]] || return 1
  pid=$(cat "$1")
  pk_running "$pid" || return 1
  [[ ! -s $1.start || $(pk_start_time "$pid") == "$(cat "$1.start")" ]]
}

# pk_tail NAME LOGFILE: prints a component's last log lines to stderr (used on a start failure).
pk_tail() {
  pk_log "last lines of $1's log ($2):"
  tail -n "${PK_TAIL_LINES:-40}" "$2" | sed 's/^/    /' >&2
}

# pk_addr_in_use LOGFILE: true when the last start attempt in LOGFILE died on a taken port.
pk_addr_in_use() {
  awk '/^===== .* start /{buf=""} {buf=buf"\n"$0} END{print buf}' "$1" | grep -qi 'address already in use'
}

# pk_stop PIDFILE: TERM the recorded process, wait up to 30 s, then KILL; removes the pid file.
pk_stop() {
  local pidfile=$1 pid i
  [[ -s $pidfile ]] || { rm -f "$pidfile" "$pidfile.start"; return 0; }
  pid=$(cat "$pidfile")
  if pk_alive "$pidfile"; then
    kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < 300; i++)); do
      pk_running "$pid" || break
      sleep 0.1
    done
    if pk_running "$pid"; then
      pk_log "$(basename "$pidfile" .pid) (pid $pid) ignored TERM for 30 s; killing"
      kill -KILL "$pid" 2>/dev/null || true
      for ((i = 0; i < 50; i++)); do
        pk_running "$pid" || break
        sleep 0.1
      done
    fi
  fi
  rm -f "$pidfile" "$pidfile.start"
}

# pk_wait_until TIMEOUT_S PIDFILE CMD...: polls CMD until it succeeds; fails early when the process
# behind PIDFILE died, or after TIMEOUT_S seconds. Return: 0 ready, 1 died, 2 timed out.
pk_wait_until() {
  local timeout=$1 pidfile=$2 deadline
  shift 2
  deadline=$((SECONDS + timeout))
  while ((SECONDS < deadline)); do
    if "$@" >/dev/null 2>&1; then return 0; fi
    pk_alive "$pidfile" || return 1
    sleep 0.2
  done
  return 2
}

pk_abs_dir() {
  mkdir -p "$1"
  (cd "$1" && pwd -P)
}

# pk_http_status_is URL CODE: the URL answers with that HTTP status (any scheme curl knows).
pk_http_status_is() {
  [[ $(curl -s -o /dev/null -w '%{http_code}' --max-time 5 "$1") == "$2" ]]
}

# pk_start_with_retry NAME TIMEOUT_S START_FN READY_FN: runs START_FN (which picks fresh ports and
# calls pk_start NAME "$logs/NAME.log" "$pids/NAME.pid" ...), waits for READY_FN; when the process
# died on a taken port, tries again with new ports (5 attempts); on any other failure prints the
# last log lines and exits non-zero. Needs $logs and $pids set by the caller.
# shellcheck disable=SC2154 # $logs and $pids belong to the caller
pk_start_with_retry() {
  local name=$1 timeout=$2 start_fn=$3 ready_fn=$4 attempt rc
  for attempt in 1 2 3 4 5; do
    "$start_fn"
    rc=0
    pk_wait_until "$timeout" "$pids/$name.pid" "$ready_fn" || rc=$?
    [[ $rc -eq 0 ]] && return 0
    pk_stop "$pids/$name.pid"
    if [[ $rc -eq 1 ]] && pk_addr_in_use "$logs/$name.log" && ((attempt < 5)); then
      pk_log "$name: a port was taken; retrying with another"
      continue
    fi
    pk_tail "$name" "$logs/$name.log"
    if [[ $rc -eq 1 ]]; then pk_die "$name exited during start"; fi
    pk_die "$name was not ready after ${timeout} s"
  done
}

# pk_use_or_start_cluster WORKDIR: keeps using the control plane $KUBECONFIG points at when it
# answers (as under tests/run-all.sh); otherwise starts one in WORKDIR/cluster and sources its
# env. Sets own_cluster to that directory (empty when an existing one is used), for the caller's
# cleanup to stop with tests/cluster/down. Run from the repository root.
pk_use_or_start_cluster() {
  own_cluster=""
  if [[ -n ${KUBECONFIG:-} && -s ${KUBECONFIG:-} ]] && kubectl get --raw /readyz >/dev/null 2>&1; then
    return 0
  fi
  own_cluster="$1/cluster"
  pk_log "no running test control plane: starting one in $own_cluster"
  # These checks need no node (and a node is one per machine): the control plane alone.
  PK_NO_NODE=1 tests/cluster/up "$own_cluster" >/dev/null || pk_die "tests/cluster/up failed (logs in $own_cluster/logs)"
  # shellcheck disable=SC1091
  . "$own_cluster/env"
}
