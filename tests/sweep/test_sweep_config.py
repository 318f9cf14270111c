"""Every preset and launcher config composes with the real Hydra, and the presets sweep what they claim to."""

from __future__ import annotations

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import OmegaConf
from omegaconf.errors import MissingMandatoryValue

from quantfid.api.variants import PAPER_SETTINGS, PAPER_VARIANTS
from quantfid.fidelity import FidelitySettings
from quantfid.models import ModelSpec
from quantfid.quant import cohort
from quantfid.sweep.app import CONF_DIR  # also registers the ${cohort:...} resolver and the structured configs
from quantfid.tracking.store import resolve_store

PRESETS = sorted(p.stem for p in (Path(CONF_DIR) / "experiment").glob("*.yaml"))
LAUNCHERS = sorted(p.stem for p in (Path(CONF_DIR) / "hydra" / "launcher").glob("*.yaml"))
FIDELITY = sorted(p.stem for p in (Path(CONF_DIR) / "fidelity").glob("*.yaml"))


def _compose(overrides: list[str]):
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return compose("config", overrides=overrides, return_hydra_config=True)


def _sweep_values(cfg, key: str) -> list[str]:
    raw = OmegaConf.to_container(cfg.hydra.sweeper.params, resolve=True)[key]
    return [v.strip() for v in str(raw).split(",")]


def test_presets_exist():
    assert {"organism_study", "smoke", "real_model"} <= set(PRESETS)


@pytest.mark.parametrize("preset", PRESETS)
def test_every_preset_composes_and_resolves(preset):
    cfg = _compose([f"experiment={preset}"])
    job = {k: OmegaConf.to_container(cfg[k], resolve=True) for k in ("model", "quant", "fidelity", "bench")}
    assert job["quant"]["backend"] and job["fidelity"]["corpus"] and job["bench"]["tasks"]
    assert cfg.hydra.callbacks.tracking._target_ == "quantfid.sweep.callbacks.SweepTracking"
    # every quant the preset sweeps is a config of the quant group
    for name in _sweep_values(cfg, "quant"):
        assert (Path(CONF_DIR) / "quant" / f"{name}.yaml").exists(), f"{preset}: no conf/quant/{name}.yaml"


def test_organism_study_sweeps_the_whole_cohort_and_the_14_variants():
    cfg = _compose(["experiment=organism_study"])
    quants = _sweep_values(cfg, "quant")
    assert quants == list(cohort("organism")) and "reference" in quants
    settings = _sweep_values(cfg, "fidelity")
    covered = set()
    for s in settings:
        fid = _compose(["experiment=organism_study", f"fidelity={s}"]).fidelity
        covered |= {v.name for v in PAPER_VARIANTS if v.name.endswith(f"@{fid.corpus}.{fid.context}")}
    assert covered == {v.name for v in PAPER_VARIANTS} and len(covered) == 14


def test_real_model_preset_targets_a_hub_model_on_gpu():
    cfg = _compose(["experiment=real_model"])
    assert cfg.model.name_or_path.startswith(("Qwen/", "meta-llama/"))
    assert cfg.model.device == "cuda" and cfg.bench.tasks == ["humaneval"]
    # overriding the model keeps the rest of the preset
    cfg2 = _compose(["experiment=real_model", "model.name_or_path=meta-llama/Llama-3.2-1B"])
    assert cfg2.model.name_or_path == "meta-llama/Llama-3.2-1B" and cfg2.model.dtype == "bfloat16"


@pytest.mark.parametrize("option", FIDELITY)
def test_every_fidelity_setting_extends_the_base_and_validates(option):
    fid = _compose([f"fidelity={option}"]).fidelity
    settings = FidelitySettings.from_config(fid)  # every key is a setting, and a valid one
    assert option == f"{settings.corpus_label}_{settings.context}", "a setting's file is named <corpus>_<context>"
    # the keys the file does not set are the dataclass defaults: their one home
    assert settings.max_tokens == FidelitySettings.max_tokens and settings.topk == FidelitySettings.topk


def test_the_paper_settings_are_exactly_the_settings_of_the_14_variants():
    composed = {(f.corpus, f.context) for f in (_compose([f"fidelity={s}"]).fidelity for s in PAPER_SETTINGS)}
    assert composed == {(v.corpus, v.context) for v in PAPER_VARIANTS}


def test_a_mistyped_fidelity_value_is_refused_while_composing():
    with pytest.raises(Exception, match="context"):
        _compose(["fidelity.context=abc"])


@pytest.mark.parametrize("launcher", LAUNCHERS)
def test_every_launcher_config_composes(launcher):
    cfg = _compose(["experiment=smoke", f"hydra/launcher={launcher}"])
    target = cfg.hydra.launcher._target_
    assert target.startswith("hydra_plugins.") and target.endswith("Launcher"), target


def test_default_store_is_local_sqlite_under_the_run_folder(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    cfg = _compose([f"run_dir={tmp_path}"])
    store = resolve_store(cfg.tracking.uri, cfg.run_dir, cfg.tracking.experiment, cfg.tracking.artifact_location)
    assert store.uri == f"sqlite:///{tmp_path}/mlflow.db"
    assert store.artifact_location == f"cas://{tmp_path}/mlartifacts"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5999")
    assert resolve_store(None, tmp_path, "x").uri == "http://127.0.0.1:5999"  # the usual MLflow variable wins


def test_model_config_group_composes():
    cfg = _compose([])
    assert ModelSpec(**OmegaConf.to_container(cfg.model)).name_or_path == "organism"
    cfg = _compose(["model=hf", "model.name_or_path=/some/dir"])
    assert ModelSpec(**OmegaConf.to_container(cfg.model)).name_or_path == "/some/dir"
    cfg = _compose(["model=hf"])
    with pytest.raises(MissingMandatoryValue):
        _ = cfg.model.name_or_path
