#!/usr/bin/env bash
# Set up (once) and start Parlour. Extra arguments go to server.py: ./start.sh --port 8000 --model NAME
set -euo pipefail
cd "$(dirname "$0")"
scripts/setup.sh
exec .venv/bin/python server.py "$@"
