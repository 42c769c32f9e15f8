#!/usr/bin/env bash
# One command for the Prefect UI on this machine: a Prefect server on 127.0.0.1, the laminar-local
# process work pool, every deployment in prefect.yaml, and a worker. Prints the UI address;
# Ctrl-C (or SIGTERM) stops the worker, then the server. Needs `make setup` (make ui does it).
#   LAMINAR_UI_PORT  port of the server (default 4200)
set -euo pipefail
cd "$(dirname "$0")/.."
port=${LAMINAR_UI_PORT:-4200}
bin=.venv/bin
export PREFECT_API_URL="http://127.0.0.1:${port}/api"
home=$("$bin/python" -c 'from prefect.settings import get_current_settings as s; print(s().home)')
mkdir -p "$home"
set -m  # children in their own process groups: they get signals only through `stop`
server="" worker=""
halt() {  # SIGINT (Prefect's clean shutdown), then SIGTERM, then SIGKILL, 10 s apart
  local pid=$1 sig
  for sig in INT TERM KILL; do
    kill -"$sig" "$pid" 2>/dev/null || return 0
    for _ in $(seq 20); do kill -0 "$pid" 2>/dev/null || return 0; sleep 0.5; done
  done
}
stop() {
  trap - EXIT INT TERM
  if [ -n "$worker" ]; then halt "$worker"; fi
  if [ -n "$server" ]; then halt "$server"; fi
  echo "laminar-ui: stopped"
}
trap stop EXIT INT TERM

"$bin/prefect" server start --host 127.0.0.1 --port "$port" >"$home/server.log" 2>&1 &
server=$!
healthy() {
  "$bin/python" -c "import urllib.request as u; u.urlopen('$PREFECT_API_URL/health', timeout=2)" \
    2>/dev/null
}
for _ in $(seq 240); do
  healthy && break
  kill -0 "$server" 2>/dev/null || { echo "laminar-ui: the server died; see $home/server.log" >&2; exit 1; }
  sleep 0.5
done
healthy || { echo "laminar-ui: the server did not answer in 120 s; see $home/server.log" >&2; exit 1; }
"$bin/prefect" work-pool inspect laminar-local >/dev/null 2>&1 ||
  "$bin/prefect" work-pool create laminar-local --type process >/dev/null
"$bin/prefect" --no-prompt deploy --all >"$home/deploy.log" 2>&1 ||
  { echo "laminar-ui: deploying failed; see $home/deploy.log" >&2; exit 1; }
"$bin/prefect" worker start --pool laminar-local >"$home/worker.log" 2>&1 &
worker=$!
echo "$server $worker" >"$home/laminar-ui.pids"  # for tools that must stop them by pid
echo "laminar-ui: Prefect UI at http://127.0.0.1:${port} (deployments laminar/full," \
  "laminar/gpt2-small, laminar/quick; logs in $home). Ctrl-C stops it."
wait "$worker"
