#!/usr/bin/env bash
# Alert rules and dashboard: `promtool check rules` and `promtool test rules` on
# dashboards/alerts.yaml, the PrometheusRule copies in sync with it, and every dashboard query
# parsing and using only the metrics of the contract (dashboards/metrics.txt).
# Installs Debian's prometheus package (which ships promtool) when promtool is missing.
set -euo pipefail
cd "$(dirname "$0")/../.."

fail() { echo "promtool.sh: FAIL: $*" >&2; exit 1; }

if ! command -v promtool >/dev/null 2>&1; then
  echo "promtool.sh: installing Debian's prometheus package for promtool"
  { apt-get update -qq >/dev/null && apt-get install -y -qq --no-install-recommends prometheus >/dev/null; } \
    || fail "could not install the prometheus package (needed for promtool)"
fi

tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT

promtool check rules dashboards/alerts.yaml || fail "dashboards/alerts.yaml does not pass promtool check rules"
# promtool resolves rule_files relative to the test file.
promtool test rules dashboards/alerts.test.yaml || fail "alert unit tests (dashboards/alerts.test.yaml) failed"
tests="$(grep -c '^  - name:' dashboards/alerts.test.yaml)"
evals="$(grep -c 'eval_time:' dashboards/alerts.test.yaml)"
echo "promtool.sh: $tests alert test groups with $evals evaluations passed"

python3 dashboards/check_queries.py --rules-out "$tmp/dashboard-queries.yaml" \
  || fail "dashboard or alert rules do not match the metrics contract"
promtool check rules "$tmp/dashboard-queries.yaml" >/dev/null \
  || { promtool check rules "$tmp/dashboard-queries.yaml" >&2 || true; fail "a dashboard query does not parse as PromQL"; }
echo "promtool.sh: every dashboard query parses as PromQL"
echo "promtool.sh: ok"
