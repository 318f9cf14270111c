#!/usr/bin/env bash
# The main job on the embedded default: set up, run the organism study (the whole organism cohort x the 4 fidelity
# settings that hold the 14 variants x the organism task suite) as one Hydra multirun tracked in MLflow, then the
# analysis, which reads only the tracking store. Re-running skips runs already FINISHED.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
store="sqlite:///$PWD/runs/mlflow.db"
.venv/bin/quantfid-sweep -m experiment=organism_study "$@"
.venv/bin/quantfid-analyze --tracking-uri "$store" --experiment organism-study --out runs/report
echo
echo "report:        $PWD/runs/report/report.html   (numbers: runs/report/summary.json)"
echo "MLflow UI:     .venv/bin/mlflow ui --backend-store-uri $store   then open http://127.0.0.1:5000"
