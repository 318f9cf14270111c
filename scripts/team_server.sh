#!/usr/bin/env bash
# Team mode: start / stop / status of a real `mlflow server` on PostgreSQL with the artifact proxy and basic auth.
#   scripts/team_server.sh start [DIR] [PORT]   -> then: source DIR/client.env; quantfid-sweep -m experiment=... tracking=team
#   scripts/team_server.sh stop  [DIR] [--purge]
#   scripts/team_server.sh status [DIR]
# DIR defaults to runs/team. Needs Debian's postgresql (scripts/install_system_deps.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
cmd=${1:-}
dir=${2:-${QUANTFID_TEAM_DIR:-runs/team}}
PY=${PYTHON:-.venv/bin/python}
case "$cmd" in
  start) exec "$PY" -m quantfid.tracking.team start --dir "$dir" ${3:+--port "$3"} ;;
  stop) exec "$PY" -m quantfid.tracking.team stop --dir "$dir" ${3:+"$3"} ;;
  status) exec "$PY" -m quantfid.tracking.team status --dir "$dir" ;;
  *) echo "usage: $0 start|stop|status [DIR] [PORT|--purge]" >&2; exit 2 ;;
esac
