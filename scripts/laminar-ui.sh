#!/usr/bin/env bash
# One command for the Prefect UI on this machine: see flows/ui.py (server, pool,
# deployments, worker; stopped with the launcher however it ends). Needs `make setup`.
#   LAMINAR_UI_PORT  port of the server (default 4200)
set -euo pipefail
cd "$(dirname "$0")/.."
exec .venv/bin/laminar-ui "$@"
