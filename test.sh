#!/usr/bin/env bash
# Set up (once, with test requirements and Chromium) and run the whole test suite.
# Extra arguments go to pytest: ./test.sh tests/unit -k presets
set -euo pipefail
cd "$(dirname "$0")"
scripts/setup.sh --dev
# Two workers, whole files each (module-scoped servers stay shared): most tests wait on a server process, a
# model or a browser, so two at a time keep both cores busy and CI well under its 30 minutes.
exec .venv/bin/python -m pytest -n 2 --dist loadfile "${@:-tests}"
