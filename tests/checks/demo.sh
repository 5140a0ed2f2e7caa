#!/usr/bin/env bash
# Proves the README's quick-start command (`make demo`): the whole demo walk-through on its own control plane,
# exiting after the rotation instead of waiting for Ctrl-C. Fails when any step of it fails.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
PK_DEMO_EXIT=1 demo/run.sh
