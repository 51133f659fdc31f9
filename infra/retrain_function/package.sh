#!/usr/bin/env bash
# Stage the retraining function with the project code it imports, ready to publish:
#   bash infra/retrain_function/package.sh [TARGET]      (default: outputs/retrain_function)
#   cd outputs/retrain_function && func azure functionapp publish <retrainFunctionAppName>
# The Function App builds requirements.txt remotely (Python 3.11, Linux).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
TARGET="${1:-$ROOT/outputs/retrain_function}"

rm -rf "$TARGET"
mkdir -p "$TARGET/src" "$TARGET/infra"
cp "$ROOT"/infra/retrain_function/{function_app.py,retrain_handler.py,host.json,requirements.txt} "$TARGET/"
# What pipelines.retrain needs: the pipeline code and presets, the component specs and scripts (their content
# versions the registered components), the environments, the shared package and the infra JSON it reads.
cp -r "$ROOT/pipelines" "$ROOT/components" "$ROOT/environments" "$TARGET/"
cp -r "$ROOT/src/chatft" "$TARGET/src/"
# evaluate's additional_includes name the shipped safety set: without it the component (and its version) differs.
mkdir -p "$TARGET/data"
cp -r "$ROOT/data/safety" "$TARGET/data/"
cp "$ROOT/infra/compute.json" "$ROOT/infra/pricing.json" "$TARGET/infra/"
find "$TARGET" -name __pycache__ -type d -prune -exec rm -rf {} +
echo "Staged the retraining function in $TARGET"
echo "Publish: cd $TARGET && func azure functionapp publish <retrainFunctionAppName>"
