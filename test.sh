#!/usr/bin/env bash
# Set up (once, with test requirements and Chromium) and run the whole test suite.
# Extra arguments go to pytest: ./test.sh tests/unit -k presets
set -euo pipefail
cd "$(dirname "$0")"
scripts/setup.sh --dev
# Four workers, whole files each (module-scoped servers stay shared): most tests wait on a server process, a
# model or a browser (two workers used 1.2 of the 2 cores and took 31 minutes), so four keep both cores busy.
exec .venv/bin/python -m pytest -n 4 --dist loadfile "${@:-tests}"
