#!/usr/bin/env python3
"""Checks the dashboard and the alert rules against the metrics contract (dashboards/metrics.txt).

- the dashboard JSON parses, has the ${datasource} and registry variables, and every panel has
  queries;
- every pullkeeper_ name in a panel query, a variable query or an alert expression is in the
  contract (histograms may add _bucket, _sum, _count), and every label a query groups by or
  matches on belongs to one of the pullkeeper metrics it uses (or is a target label);
- the alert rules in the kustomize base and the Helm chart equal dashboards/alerts.yaml, and the
  chart's copy of the dashboard equals dashboards/pullkeeper.json;
- with --rules-out FILE, writes every dashboard query as a recording rule so that
  `promtool check rules FILE` proves each one parses.

Exits 1 with one line per problem.
"""
import argparse
import json
import re
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
NAME = re.compile(r"\bpullkeeper_[a-z0-9_]+")
HIST_SUFFIXES = ("_bucket", "_sum", "_count")
# Labels Prometheus itself or its scrape config adds, plus the histogram bucket label.
TARGET_LABELS = {"instance", "job", "pod", "namespace", "le", "container", "service", "endpoint"}


def load_contract():
    metrics = {}
    for line in (ROOT / "dashboards/metrics.txt").read_text().splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        name, kind, labels = line.split()
        metrics[name] = (kind, set() if labels == "-" else set(labels.split(",")))
    return metrics


def resolve(name, contract):
    """The contract metric a series name belongs to, or None."""
    if name in contract:
        return name
    for suffix in HIST_SUFFIXES:
        base = name[: -len(suffix)]
        if name.endswith(suffix) and contract.get(base, ("",))[0] == "histogram":
            return base
    return None


def check_expr(where, expr, contract, problems):
    used = set()
    for name in NAME.findall(expr):
        metric = resolve(name, contract)
        if metric is None:
            problems.append(f"{where}: {name} is not in the metrics contract (dashboards/metrics.txt)")
        else:
            used.add(metric)
    allowed = set(TARGET_LABELS)
    for metric in used:
        allowed |= contract[metric][1]
    labels = set()
    for group in re.findall(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)", expr):
        labels |= {l.strip() for l in group.split(",") if l.strip()}
    labels |= set(re.findall(r"[{,]\s*([a-zA-Z_][a-zA-Z0-9_]*)\s*(?:=~|!~|!=|=)", expr))
    labels |= set(re.findall(r"label_values\([^,]+,\s*([a-zA-Z_][a-zA-Z0-9_]*)\)", expr))
    labels.discard("__name__")
    for label in sorted(labels - allowed):
        problems.append(f"{where}: label {label!r} is not a label of {', '.join(sorted(used)) or 'any metric used'}")
    if not used:
        problems.append(f"{where}: uses no pullkeeper_ metric")


def dashboard_queries(dashboard, problems):
    """(where, expr) for every panel query and variable query."""
    queries = []
    variables = {v.get("name"): v for v in dashboard.get("templating", {}).get("list", [])}
    ds = variables.get("datasource")
    if not ds or ds.get("type") != "datasource" or ds.get("query") != "prometheus":
        problems.append("dashboard: no `datasource` variable of type datasource/prometheus")
    reg = variables.get("registry")
    if not reg:
        problems.append("dashboard: no `registry` variable")
    for name, var in variables.items():
        if var.get("type") == "query":
            q = var.get("query")
            q = q.get("query") if isinstance(q, dict) else q
            queries.append((f"variable {name}", q or ""))
    if dashboard.get("schemaVersion", 0) < 36:
        problems.append("dashboard: schemaVersion below 36")

    def walk(panels):
        for p in panels:
            if p.get("type") == "row":
                walk(p.get("panels", []))
                continue
            title = p.get("title", "?")
            if p.get("datasource", {}).get("uid") != "${datasource}":
                problems.append(f"panel {title!r}: datasource is not ${{datasource}}")
            targets = p.get("targets", [])
            if not targets:
                problems.append(f"panel {title!r}: no queries")
            for t in targets:
                queries.append((f"panel {title!r} query {t.get('refId')}", t.get("expr", "")))
    walk(dashboard.get("panels", []))
    return queries


def promql(expr):
    """A dashboard query with Grafana's variables replaced, as Prometheus would receive it."""
    return (expr.replace("$__rate_interval", "5m").replace("$__interval", "1m")
            .replace("$registry", ".*").replace("${registry}", ".*"))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rules-out", help="write dashboard queries as recording rules to this file")
    ap.add_argument("--list-queries", action="store_true",
                    help="print every dashboard query and alert expression as JSON lines and exit")
    args = ap.parse_args()
    contract = load_contract()
    problems = []

    try:
        dashboard = json.loads((ROOT / "dashboards/pullkeeper.json").read_text())
    except (OSError, ValueError) as e:
        print(f"dashboards/pullkeeper.json does not parse: {e}", file=sys.stderr)
        return 1
    queries = dashboard_queries(dashboard, problems)

    rules = yaml.safe_load((ROOT / "dashboards/alerts.yaml").read_text())
    alerts = [(f"alert {r['alert']}", r["expr"]) for g in rules["groups"] for r in g["rules"] if "alert" in r]

    if args.list_queries:
        for where, expr in queries + alerts:
            print(json.dumps({"where": where, "expr": promql(expr)}))
        return 0

    for where, expr in queries + alerts:
        check_expr(where, expr, contract, problems)

    # The copies of the rules must equal the source.
    kustomize = yaml.safe_load((ROOT / "deploy/kustomize/components/prometheus-operator/prometheusrule.yaml").read_text())
    if kustomize.get("spec", {}).get("groups") != rules["groups"]:
        problems.append("deploy/kustomize/components/prometheus-operator/prometheusrule.yaml differs from dashboards/alerts.yaml: "
                        "run dashboards/sync-alerts.sh")
    chart_copy = ROOT / "deploy/helm/pullkeeper/files/alerts.yaml"
    if chart_copy.read_bytes() != (ROOT / "dashboards/alerts.yaml").read_bytes():
        problems.append(f"{chart_copy.relative_to(ROOT)} differs from dashboards/alerts.yaml: "
                        "run dashboards/sync-alerts.sh")

    chart_dashboard = ROOT / "deploy/helm/pullkeeper/files/pullkeeper.json"
    if chart_dashboard.read_bytes() != (ROOT / "dashboards/pullkeeper.json").read_bytes():
        problems.append(f"{chart_dashboard.relative_to(ROOT)} differs from dashboards/pullkeeper.json: "
                        "run dashboards/sync-alerts.sh")

    if args.rules_out:
        out = {"groups": [{"name": "dashboard-queries", "rules": [
            {"record": f"pullkeeper:dashboard_query_{i}", "expr": promql(expr)}
            for i, (where, expr) in enumerate(queries) if not where.startswith("variable")]}]}
        Path(args.rules_out).write_text(yaml.safe_dump(out, sort_keys=False))

    for p in problems:
        print(f"FAIL: {p}", file=sys.stderr)
    if not problems:
        print(f"ok: {len(queries)} dashboard queries and {len(alerts)} alert expressions use only contract "
              f"metrics and labels; rule and dashboard copies in sync")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
