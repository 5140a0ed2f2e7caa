#!/usr/bin/env bash
# Copies the alert rules in dashboards/alerts.yaml (the one source) into the kustomize
# prometheus-operator component's PrometheusRule and the Helm chart, and the dashboard into the chart. Run it after editing
# alerts.yaml or pullkeeper.json; tests/checks/promtool.sh fails when the copies differ.
set -euo pipefail
cd "$(dirname "$0")/.."

src=dashboards/alerts.yaml
cp "$src" deploy/helm/pullkeeper/files/alerts.yaml
cp dashboards/pullkeeper.json deploy/helm/pullkeeper/files/pullkeeper.json

{
  cat <<'HEAD'
# GENERATED from dashboards/alerts.yaml by dashboards/sync-alerts.sh: edit that file, not this one.
# Needs the Prometheus Operator CRDs.
apiVersion: monitoring.coreos.com/v1
kind: PrometheusRule
metadata:
  name: pullkeeper
  namespace: pullkeeper
  labels:
    app.kubernetes.io/name: pullkeeper
spec:
HEAD
  # Everything from `groups:` on, indented under spec (comments and block scalars kept as written).
  sed -n '/^groups:/,$p' "$src" | sed 's/^\(.\)/  \1/'
} > deploy/kustomize/components/prometheus-operator/prometheusrule.yaml
