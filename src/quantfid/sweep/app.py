"""`quantfid-sweep`: the Hydra app that runs a study.

    quantfid-sweep -m experiment=organism_study          # the organism cohort x the fidelity settings
    quantfid-sweep -m experiment=smoke                   # 3 quants on a handful of prompts (seconds)
    quantfid-sweep quant=rtn_w4g64 bench.limit=20        # one job; any config value is an override
    quantfid-sweep -m experiment=smoke hydra/launcher=joblib   # local parallel jobs

Each job: load reference -> quantize -> measure fidelity -> run benchmarks -> track (see quantfid.sweep.task).
"""

from __future__ import annotations

import os
from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf

#: conf/ at the project root (the package is installed editable; QUANTFID_CONF_DIR points elsewhere if not).
CONF_DIR = os.environ.get("QUANTFID_CONF_DIR") or str(Path(__file__).resolve().parents[3] / "conf")


def _cohort(name: str) -> str:
    """``${cohort:organism}`` -> the cohort's quant names as one sweep value list (``reference,rtn_w8_g128,...``)."""
    from quantfid.quant import cohort

    return ",".join(cohort(name))


# Registered at import, before Hydra composes: experiment presets sweep `quant: ${cohort:organism}`, so the cohort has
# one source of truth (conf/cohort/<name>.yaml).
OmegaConf.register_new_resolver("cohort", _cohort, replace=True)


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="config")
def main(cfg: DictConfig) -> dict:
    from quantfid.sweep.task import run_job

    return run_job(cfg)


if __name__ == "__main__":
    main()
