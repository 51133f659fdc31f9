#!/usr/bin/env bash
# Static checks for the Bicep templates, runnable without Azure, a Bicep compiler or the Makefile:
#   1. every .bicep file parses (pycep);
#   2. checkov's Bicep checks: no failed check and no parsing error;
#   3. every checkov skip comment gives a reason.
# Usage: infra/check.sh [DIR]   (DIR defaults to infra/; the tests point it at broken copies)
#        CHECKOV_REPORT=path infra/check.sh   keeps checkov's JSON report there (passed, failed and skipped checks)
# Tools live in their own venv (.venv-iac, created on first run): checkov's pins clash with the main stack.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
TARGET="${1:-$ROOT/infra}"
VENV="${CHATFT_IAC_VENV:-$ROOT/.venv-iac}"
CHECKOV_VERSION="3.3.30"  # brings pycep-parser 0.5.1

if [[ ! -d "$TARGET" ]]; then
    echo "infra/check.sh: $TARGET is not a directory" >&2
    exit 2
fi

if [[ ! -x "$VENV/bin/python" ]]; then
    echo "Creating $VENV (one-off, a few minutes)..."
    "${PYTHON:-python3}" -m venv "$VENV"
fi
# Re-install when the venv is missing checkov or holds another version (e.g. an interrupted first run).
installed="$("$VENV/bin/python" -c 'import importlib.metadata as m; print(m.version("checkov"))' 2>/dev/null || true)"
if [[ "$installed" != "$CHECKOV_VERSION" ]]; then
    "$VENV/bin/pip" install --quiet --disable-pip-version-check "checkov==$CHECKOV_VERSION"
fi

echo "== pycep: parse every .bicep file under $TARGET"
"$VENV/bin/python" - "$TARGET" <<'EOF'
import re
import sys
from pathlib import Path

from pycep import BicepParser

target = Path(sys.argv[1])
files = sorted(target.rglob("*.bicep"))
if not files:
    sys.exit(f"no .bicep files under {target}")
failures = []
for path in files:
    try:
        BicepParser().parse(file_path=path)
    except Exception as exc:  # any parser error fails the check; the message says where
        failures.append(f"{path}: {type(exc).__name__}: {str(exc).splitlines()[0]}")
    # A skip without a reason hides a finding; checkov itself accepts one.
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        match = re.search(r"checkov:skip=([A-Z0-9_,]+)(.*)", line)
        if match and len(match.group(2).lstrip(": ").strip()) < 10:
            failures.append(f"{path}:{number}: checkov:skip={match.group(1)} needs a reason (': why')")
for failure in failures:
    print(failure, file=sys.stderr)
if failures:
    sys.exit(f"{len(failures)} problem(s) in {len(files)} Bicep file(s)")
print(f"parsed {len(files)} Bicep file(s)")
EOF

echo "== checkov (bicep)"
if [[ -n "${CHECKOV_REPORT:-}" ]]; then
    report="$CHECKOV_REPORT"
else
    report="$(mktemp)"
    trap 'rm -f "$report"' EXIT
fi
# checkov exits non-zero on failed checks only; parsing errors are judged from the report below.
"$VENV/bin/checkov" -d "$TARGET" --framework bicep --skip-download --compact -o json >"$report" || true
"$VENV/bin/python" - "$report" <<'EOF'
import json
import sys

text = open(sys.argv[1]).read()
try:
    reports = json.loads(text)
except json.JSONDecodeError:
    sys.exit(f"checkov did not produce a JSON report:\n{text[-2000:]}")
reports = reports if isinstance(reports, list) else [reports]
failed = parsing_errors = passed = skipped = 0
for report in reports:
    summary = report["summary"]
    failed += summary["failed"]
    parsing_errors += summary["parsing_errors"]
    passed += summary["passed"]
    skipped += summary["skipped"]
    for check in report["results"].get("failed_checks", []):
        start, end = check["file_line_range"]
        print(f"{check['file_path']}:{start}-{end}: {check['check_id']} {check['check_name']} ({check['resource']})",
              file=sys.stderr)
print(f"checkov: passed {passed}, failed {failed}, skipped {skipped}, parsing errors {parsing_errors}")
if parsing_errors:
    print("checkov could not parse a file: run the pycep step on it to see where", file=sys.stderr)
if failed or parsing_errors:
    sys.exit(1)
EOF
