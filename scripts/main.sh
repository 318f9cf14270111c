#!/usr/bin/env bash
# The main job on the embedded default: set up (Python only: no PostgreSQL or Chromium, which only the tests need),
# run the organism study (the whole organism cohort x the 4 fidelity settings that hold the 14 variants x the
# organism task suite) as one Hydra multirun tracked in MLflow, then the analysis, which reads only the tracking store.
# Re-running skips runs already FINISHED. Exit status: the sweep's (0; 1 when a job FAILED; 2 for bad input found
# before the first run), else the analysis's.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
store="sqlite:///$PWD/runs/mlflow.db"
sweep_status=0
.venv/bin/quantfid-sweep -m experiment=organism_study "$@" || sweep_status=$?
if [ "$sweep_status" -ne 0 ] && [ "$sweep_status" -ne 1 ]; then exit "$sweep_status"; fi
.venv/bin/quantfid-analyze --tracking-uri "$store" --experiment organism-study --out runs/report
summary=$(ls -t runs/multirun/*/*/quantfid_sweep.json 2>/dev/null | head -n 1 || true)
echo
echo "report:        $PWD/runs/report/report.html   (numbers: runs/report/summary.json)"
echo "MLflow UI:     .venv/bin/mlflow ui --backend-store-uri $store   then open:"
if [ -n "$summary" ]; then
  .venv/bin/python -c "import json, sys; u = json.load(open(sys.argv[1])).get('urls', {}); \
print('  the runs:    ' + u.get('runs', 'http://127.0.0.1:5000')); \
print('  compare:     ' + u['compare']) if 'compare' in u else None" "$summary"
else
  echo "  http://127.0.0.1:5000"
fi
exit "$sweep_status"
