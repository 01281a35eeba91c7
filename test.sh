#!/usr/bin/env bash
# Set up (once, with test requirements and Chromium) and run the whole test suite.
# Extra arguments go to pytest: ./test.sh tests/unit -k presets
set -euo pipefail
cd "$(dirname "$0")"
scripts/setup.sh --dev
exec .venv/bin/python -m pytest "${@:-tests}"
