"""Preflight: every job of a sweep is composed and checked before the first run is written, and the reference is
loaded and probed once.

The Hydra callback calls :func:`preflight` from ``on_multirun_start`` (and ``on_run_start``): it expands the sweep the
way Hydra's basic sweeper does (``hydra.sweeper.params`` + the command line), composes each job's config with Hydra's
own config loader (what the launcher does a moment later) and checks, without loading a model, the quant schema, the
model spec (dtype, device, that the path or hub id gives a config), the fidelity setting (schema, context against the
model's positions, token budget, corpus), the task names, the bench limit and the launcher; then it loads each distinct
reference once and checks its logits on a probe batch are finite. Any problem raises :class:`PreflightError`: one line
naming the job (its overrides) and the field; the callback prints it and exits 2 before the store is touched.
"""

from __future__ import annotations

import functools
import json
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from quantfid.bench import TaskConfigError, load_task
from quantfid.fidelity import FidelityError, FidelitySettings
from quantfid.models.loading import ModelLoadError, check_spec, resolve_name
from quantfid.quant import QuantConfigError, validate_quant_config
from quantfid.quant.base import probe_batch, probe_logits
from quantfid.sweep.stages import load_reference_stage, model_spec, perf_workload, quant_config

log = logging.getLogger("quantfid.sweep")


class PreflightError(ValueError):
    """A job of the sweep cannot run; the message names the job (its overrides) and the field."""


@dataclass(frozen=True)
class Job:
    """One job of the sweep: its overrides (as the launcher gets them) and its composed config."""

    num: int
    overrides: tuple[str, ...]
    cfg: DictConfig

    @property
    def label(self) -> str:
        return f"job #{self.num} ({' '.join(self.overrides) or 'no overrides'})"


def sweep_overrides(cfg: DictConfig) -> list[list[str]]:
    """The override list of every job, in launch order, as Hydra's basic sweeper builds them."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser

    params = cfg.hydra.sweeper.get("params") or {}
    args = [f"{k}={v}" for k, v in OmegaConf.to_container(params, resolve=True).items()]
    args += list(OmegaConf.to_container(cfg.hydra.overrides.task, resolve=False))
    overrides = OverridesParser.create().parse_overrides(args)
    return [list(job) for batch in BasicSweeper.split_arguments(overrides, None) for job in batch]


def compose_jobs(cfg: DictConfig) -> list[Job]:
    """Every job's composed config; a job that does not compose (``quant=nope``) is a :class:`PreflightError`."""
    from hydra.core.global_hydra import GlobalHydra

    target = str(cfg.hydra.sweeper.get("_target_", ""))
    if not target.endswith("BasicSweeper"):  # another sweeper picks its jobs as it goes: check the primary config
        return [Job(0, (), cfg)]
    loader = GlobalHydra.instance().hydra.config_loader  # type: ignore[union-attr]
    jobs = []
    for num, overrides in enumerate(sweep_overrides(cfg)):
        try:
            job_cfg = loader.load_sweep_config(cfg, list(overrides))
        except Exception as err:  # Hydra's composition errors: missing option, bad value, unknown key
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise PreflightError(f"job #{num} ({' '.join(overrides)}): {first}") from None
        jobs.append(Job(num, tuple(overrides), job_cfg))
    if str(cfg.hydra.launcher.get("_target_", "")).endswith(".BasicLauncher"):
        # in-process jobs only: other launchers pickle the config loader to their workers, and with it these configs
        _hand_over(loader, {job.overrides: job.cfg for job in jobs})
    return jobs


def _hand_over(loader: Any, composed: dict[tuple[str, ...], DictConfig]) -> None:
    """Let Hydra take the configs composed here instead of composing each job again (Hydra composes a job in about
    0.3-1 s, and twice per job: the basic sweeper's ``validate_batch_is_legal`` and then the launcher): a
    ``load_sweep_config`` call for a job's overrides returns the config this preflight composed and checked (the
    launcher only sets ``hydra.job.id``/``num`` on it); anything else is composed as before."""
    original = loader.load_sweep_config

    def load_sweep_config(master_config: DictConfig, sweep_overrides: list[str]) -> DictConfig:
        ready = composed.get(tuple(sweep_overrides))
        return ready if ready is not None else original(master_config, sweep_overrides)

    loader.load_sweep_config = load_sweep_config


def _container(node: Any) -> dict[str, Any]:
    return OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else dict(node or {})


@functools.lru_cache(maxsize=16)
def _model_config(name_or_path: str, revision: str | None, trust_remote_code: bool) -> Any:
    """The model's ``config.json`` (transformers' AutoConfig): positions and layer sizes, without the weights."""
    from transformers import AutoConfig


    resolved = resolve_name(name_or_path)
    looks_local = resolved.startswith(("/", ".", "~")) or Path(resolved).exists()
    if looks_local and not Path(resolved).expanduser().is_dir():
        raise PreflightError(
            f"model.name_or_path={name_or_path!r}: no such directory; give a local checkpoint directory or a hub id"
        )
    try:
        return AutoConfig.from_pretrained(resolved, revision=revision, trust_remote_code=trust_remote_code)
    except Exception as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise PreflightError(
            f"model.name_or_path={name_or_path!r}: no model config could be read ({first}). Give a local directory "
            "holding a transformers checkpoint, or a hub id that is in the local cache."
        ) from None


@functools.lru_cache(maxsize=16)
def _input_dims(name_or_path: str, revision: str | None, trust_remote_code: bool) -> dict[str, int]:
    """``{module name: input features}`` of the model's Linear / Conv1D layers, built on the meta device (no
    memory, no weights read): what a group size must divide."""
    import torch
    from transformers import AutoModelForCausalLM

    config = _model_config(name_or_path, revision, trust_remote_code)
    try:
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(config, trust_remote_code=trust_remote_code)
    except Exception:  # an architecture transformers cannot build empty: leave the check to the quant stage
        return {}
    dims = {}
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear):
            dims[name] = int(module.in_features)
        elif type(module).__name__ == "Conv1D" and hasattr(module, "weight"):  # GPT-2's (in, out) weight
            dims[name] = int(module.weight.shape[0])
    return dims


def check_model(model_cfg: Mapping[str, Any]) -> Any:
    """dtype, device, and that the path or hub id gives a model config; returns the config."""

    try:
        spec = model_spec(model_cfg)
        check_spec(spec)
    except (ModelLoadError, KeyError, TypeError) as err:
        raise PreflightError(str(err)) from None
    return _model_config(spec.name_or_path, spec.revision, spec.trust_remote_code)


def check_quant(quant_cfg: Mapping[str, Any], quant_name: str, model_cfg: Mapping[str, Any]) -> dict[str, Any]:
    """The backend's schema, GPU-only configs on a CPU model, and that a group size divides the layers it groups."""

    try:
        qc = validate_quant_config(quant_config(quant_cfg, quant_name))
    except QuantConfigError as err:
        raise PreflightError(str(err)) from None
    device = str(model_cfg.get("device", "cpu"))
    reason = qc.gpu_only_reason()
    if reason and not device.startswith("cuda"):
        raise PreflightError(
            f"quant={qc.name!r} is GPU-only ({reason}) but model.device={device!r}; run it with model.device=cuda or "
            "leave it out of the sweep"
        )
    group = qc.resolved.get("group_size")
    if isinstance(group, int) and not isinstance(group, bool) and group > 0:
        dims = _input_dims(
            str(model_cfg["name_or_path"]), model_cfg.get("revision"), bool(model_cfg.get("trust_remote_code"))
        )
        bad = {n: d for n, d in dims.items() if d % group and not n.endswith("lm_head")}
        if bad:
            name, dim = next(iter(bad.items()))
            sizes = sorted(set(dims.values()))
            raise PreflightError(
                f"quant.group_size={group} does not divide the input size {dim} of layer {name!r} "
                f"({len(bad)} layers); choose a group size that divides {sizes}"
            )
    return dict(qc.resolved)


def check_fidelity(fidelity_cfg: Mapping[str, Any], model_config: Any) -> None:

    limit = getattr(model_config, "max_position_embeddings", None) or getattr(model_config, "n_positions", None)
    context = fidelity_cfg.get("context")
    if limit is not None and isinstance(context, int) and context > int(limit):  # before the budget check it implies
        raise PreflightError(
            f"fidelity.context={context} is longer than the model supports (max_position_embeddings={limit}); use "
            f"fidelity.context<={limit}"
        )
    try:
        FidelitySettings.from_config(fidelity_cfg)
    except (FidelityError, TypeError) as err:
        raise PreflightError(str(err)) from None


def check_bench(bench_cfg: Mapping[str, Any]) -> None:

    limit = bench_cfg.get("limit")
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise PreflightError(f"bench.limit={limit!r} must be an integer >= 1 (the first N prompts) or null (all)")
    tasks = bench_cfg.get("tasks") or []
    if not isinstance(tasks, list) or not tasks:
        raise PreflightError(f"bench.tasks={tasks!r} must be a non-empty list of task names (conf/task/)")
    for name in tasks:
        try:
            load_task(str(name))
        except TaskConfigError as err:
            raise PreflightError(f"bench.tasks: {err}") from None


def check_perf(perf_cfg: Mapping[str, Any]) -> None:

    try:
        perf_workload(perf_cfg)
    except (ValueError, TypeError) as err:
        raise PreflightError(str(err)) from None


def check_launcher(hydra_cfg: Any) -> None:
    """The launcher settings quantfid's launcher configs expose (parallel jobs, Ray CPUs)."""
    launcher = _container(hydra_cfg.get("launcher") or {})
    n_jobs = launcher.get("n_jobs")
    if n_jobs is not None and (not isinstance(n_jobs, int) or n_jobs == 0 or n_jobs < -1):
        raise PreflightError(f"hydra.launcher.n_jobs={n_jobs!r} must be a positive integer (or -1: all cores)")
    for key in ("cpus_per_task", "timeout_min", "array_parallelism", "tasks_per_node", "nodes"):
        value = launcher.get(key)
        if value is not None and (not isinstance(value, int) or value < 1):
            raise PreflightError(f"hydra.launcher.{key}={value!r} must be a positive integer")
    init = (launcher.get("ray") or {}).get("init") or {}
    if init.get("num_cpus") is not None and (not isinstance(init["num_cpus"], int) or init["num_cpus"] < 1):
        raise PreflightError(f"hydra.launcher.ray.init.num_cpus={init['num_cpus']!r} must be a positive integer")


def _once(done: set[str], what: str, *parts: Any) -> bool:
    """True the first time these parts are seen: jobs of a sweep share most nodes, each is checked once."""
    key = json.dumps([what, *parts], sort_keys=True, default=str)
    if key in done:
        return False
    done.add(key)
    return True


def check_job(cfg: DictConfig, quant_name: str, done: set[str] | None = None) -> None:
    """Every check of one composed job config that needs no model weights (``done``: checks already passed)."""
    done = set() if done is None else done
    model_cfg = _container(cfg.get("model"))
    model_config = check_model(model_cfg)
    quant_cfg = _container(cfg.get("quant"))
    if _once(done, "quant", quant_cfg, quant_name, model_cfg):
        check_quant(quant_cfg, quant_name, model_cfg)
    if cfg.get("fidelity") is not None:
        fidelity_cfg = _container(cfg.fidelity)
        if _once(done, "fidelity", fidelity_cfg, model_cfg):
            check_fidelity(fidelity_cfg, model_config)
    bench_cfg = _container(cfg.get("bench"))
    if _once(done, "bench", bench_cfg):
        check_bench(bench_cfg)
    perf_cfg = _container(cfg.get("perf"))
    if _once(done, "perf", perf_cfg):
        check_perf(perf_cfg)
    if cfg.get("hydra") is not None:
        launcher = _container(cfg.hydra.get("launcher") or {})
        if _once(done, "launcher", launcher):
            check_launcher(cfg.hydra)


def _quant_choice(cfg: DictConfig) -> str:
    try:
        choice = cfg.hydra.runtime.choices.get("quant")
    except Exception:
        choice = None
    node = cfg.get("quant") or {}
    return str(choice or node.get("name") or node.get("backend") or "unknown")


def check_reference(model_cfg: Mapping[str, Any]) -> Any:
    """Load the reference (once per worker: the jobs of the basic launcher reuse it) and check it: loadable weights,
    finite parameters, finite logits on the quant stage's probe batch. Returns the loaded reference."""
    import torch


    spec = model_spec(model_cfg)
    where = f"model.name_or_path={spec.name_or_path!r}"
    try:
        ref = load_reference_stage(spec)
    except Exception as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else ""
        raise PreflightError(
            f"{where}: the reference cannot be loaded ({type(err).__name__}: {first}); the checkpoint is broken or "
            "truncated: re-export or re-download it"
        ) from None
    bad = [n for n, p in ref.model.named_parameters() if not torch.isfinite(p.detach()).all()]
    if bad:
        load_reference_stage.cache_clear()
        raise PreflightError(
            f"{where}: the reference has non-finite weights (NaN/inf in {len(bad)} tensors, first {bad[0]!r}); "
            "fix or re-export the checkpoint"
        )
    logits = probe_logits(ref.model, probe_batch(ref))
    if not torch.isfinite(logits).all():
        load_reference_stage.cache_clear()
        raise PreflightError(
            f"{where}: the reference gives non-finite logits on the probe batch (model.dtype={spec.dtype!r}); try "
            "model.dtype=float32 or check the checkpoint"
        )
    return ref


def preflight(cfg: DictConfig, multirun: bool, between: Any = None) -> list[Job]:
    """Compose and check every job, call ``between()`` (the store check: cheap, so before the reference is loaded),
    then load and probe the reference(s); returns the jobs. Raises :class:`PreflightError`."""
    started = time.perf_counter()
    if multirun:
        jobs = compose_jobs(cfg)
    else:
        overrides = tuple(cfg.hydra.overrides.task) if cfg.get("hydra") is not None else ()
        jobs = [Job(0, overrides, cfg)]
    done: set[str] = set()
    for job in jobs:
        try:
            check_job(job.cfg, _quant_choice(job.cfg), done)
        except PreflightError as err:
            raise PreflightError(f"{job.label}: {err}") from None
    if between is not None:
        between()
    seen: list[dict[str, Any]] = []
    for job in jobs:  # usually one reference for the whole sweep
        model_cfg = _container(job.cfg.model)
        if model_cfg not in seen:
            seen.append(model_cfg)
            check_reference(model_cfg)
    log.info(
        "preflight: %d job(s) checked, %d reference(s) loaded and probed in %.1f s", len(jobs), len(seen),
        time.perf_counter() - started,
    )  # fmt: skip
    return jobs
