#!/usr/bin/env python3
"""Runs every dashboard query and alert expression against a live Prometheus.

usage: prove_queries.py PROMETHEUS_URL [EXPECTATION...]

Dashboard queries must evaluate without error and return at least one series. Each EXPECTATION is
a PromQL condition about the scenario (`max(pullkeeper_managed_secrets{registry="x"}) == 2`) that
must return a series, so the panels are shown to carry the right numbers too. Alert expressions
must evaluate without error (they return series only while firing), every pullkeeper_ metric they
use must have series, and Prometheus' own evaluation of the loaded alert rules must be healthy.
Prints one line per query; exits 1 if any failed.
"""
import json
import re
import subprocess
import sys
import urllib.parse
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def get(base, path, **params):
    url = f"{base}{path}?{urllib.parse.urlencode(params, doseq=True)}"
    try:
        with urllib.request.urlopen(url, timeout=10) as resp:
            return json.load(resp)
    except urllib.error.HTTPError as e:
        return json.load(e)


def main():
    base = sys.argv[1].rstrip("/")
    listed = subprocess.run([sys.executable, str(ROOT / "dashboards/check_queries.py"), "--list-queries"],
                            check=True, capture_output=True, text=True).stdout
    failures, passed = [], 0
    for line in listed.splitlines():
        item = json.loads(line)
        where, expr = item["where"], item["expr"]
        variable = re.fullmatch(r"label_values\((\w+),\s*(\w+)\)", expr)
        if variable:
            metric, label = variable.groups()
            body = get(base, f"/api/v1/label/{label}/values", **{"match[]": metric})
            n = len(body.get("data") or [])
        else:
            body = get(base, "/api/v1/query", query=expr)
            n = len((body.get("data") or {}).get("result") or [])
        if body.get("status") != "success":
            failures.append(f"{where}: {body.get('errorType')}: {body.get('error')}\n    {expr}")
            print(f"FAIL  {where}: error {body.get('error')}")
            continue
        if where.startswith("alert"):
            empty = []
            for name in sorted(set(re.findall(r"\bpullkeeper_[a-z0-9_]+", expr))):
                got = get(base, "/api/v1/query", query=f"count({name})")
                if not (got.get("data") or {}).get("result"):
                    empty.append(name)
            if empty:
                failures.append(f"{where}: no series for {', '.join(empty)}")
                print(f"FAIL  {where}: no series for {', '.join(empty)}")
                continue
            print(f"ok    {where}: evaluates ({n} series match now, before `for`); its metrics have series")
        elif n == 0:
            failures.append(f"{where}: no series\n    {expr}")
            print(f"FAIL  {where}: no series")
            continue
        else:
            print(f"ok    {where}: {n} series")
        passed += 1

    for expr in sys.argv[2:]:
        body = get(base, "/api/v1/query", query=expr)
        result = (body.get("data") or {}).get("result") or []
        if body.get("status") != "success" or not result:
            actual = get(base, "/api/v1/query", query=re.sub(r"\s*(==|>=|<=|>|<|!=)\s*[0-9.e+]+\s*$", "", expr))
            seen = [r.get("value", [None, None])[1] for r in (actual.get("data") or {}).get("result") or []]
            failures.append(f"expectation {expr}: not met (value now: {', '.join(seen) or 'no series'})")
            print(f"FAIL  expectation {expr}")
        else:
            print(f"ok    expectation {expr}")
            passed += 1

    rules = get(base, "/api/v1/rules")
    loaded = [r for g in (rules.get("data") or {}).get("groups", []) for r in g.get("rules", [])]
    if not loaded:
        failures.append("Prometheus loaded no alert rules")
    for r in loaded:
        if r.get("health") != "ok":
            failures.append(f"rule {r.get('name')}: health {r.get('health')}: {r.get('lastError')}")
        else:
            passed += 1
    print(f"rules: {len(loaded)} loaded, {sum(r.get('health') == 'ok' for r in loaded)} healthy")

    for f in failures:
        print(f"FAIL: {f}", file=sys.stderr)
    print(f"prometheus proof: {passed} passed, {len(failures)} failed")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
