"""Quant configs: the schema of every backend, validation before any model is loaded, the quant fingerprint.

A quant config is a plain mapping (one YAML per config under ``conf/quant/``): ``name``, ``backend``, then the
backend's options. :func:`validate_quant_config` checks it against the backend's declared options and fills in the
defaults, so that a typo or an unsupported value fails in a second with one error naming the field and the allowed
values, instead of minutes later inside a library.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REQUIRED = object()  # sentinel: an option without a default
# Keys that label a config but do not change the quant: left out of the fingerprint.
LABEL_KEYS = ("name", "note")


class QuantConfigError(ValueError):
    """A quant config that cannot be used; the message names the field, what was wrong and the allowed values."""


@dataclass(frozen=True)
class Option:
    """One option of a backend: allowed values (``choices``) or a type, a default, and when it applies."""

    name: str
    kind: type | tuple[type, ...]
    default: Any = REQUIRED
    choices: tuple | None = None
    applies: Callable[[Mapping[str, Any]], bool] | None = None  # evaluated on the other resolved options
    applies_doc: str = ""
    check: Callable[[Any], str | None] | None = None  # returns an error text or None
    doc: str = ""


def _bits_glob_map(value: Any) -> str | None:
    if not isinstance(value, Mapping):
        return "must be a mapping of module-name glob -> bits, e.g. {'*.self_attn.*': 8, '*.mlp.*': 3}"
    for k, v in value.items():
        if not isinstance(k, str) or isinstance(v, bool) or not isinstance(v, int) or not 2 <= v <= 8:
            return f"entry {k!r}: {v!r} must map a glob (str) to bits in 2..8"
    return None


def _str_list(value: Any) -> str | None:
    if not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):
        return "must be a list of module-name globs (e.g. ['lm_head'])"
    return None


SKIP = Option(
    "skip",
    (list, tuple),
    default=("lm_head",),
    check=_str_list,
    doc="module-name globs left in full precision (default: lm_head)",
)
_FLOAT_DTYPES = ("float32", "bfloat16", "float16")


@dataclass(frozen=True)
class BackendSchema:
    """The options a backend accepts; ``gpu_only`` configs raise a clear error on a CPU model spec."""

    backend: str
    options: tuple[Option, ...]
    doc: str = ""
    gpu_only: Callable[[Mapping[str, Any]], str | None] = lambda cfg: None  # reason text when CUDA is needed


def _is4(cfg: Mapping[str, Any]) -> bool:
    return cfg.get("bits") == 4


def _torchao_grouped(cfg: Mapping[str, Any]) -> bool:
    return cfg.get("method") in ("intx_weight_only", "int4_weight_only")


SCHEMAS: dict[str, BackendSchema] = {
    s.backend: s
    for s in [
        BackendSchema("reference", (), doc="the unquantized reference (the cohort's anchor, KLD 0)"),
        BackendSchema(
            "rtn",
            (
                Option("bits", int, choices=(2, 3, 4, 5, 6, 7, 8), doc="integer grid width"),
                Option("group_size", int, default=64, choices=(-1, 16, 32, 64, 128, 256), doc="-1: one group per row"),
                Option("symmetric", bool, default=True, doc="symmetric grid around 0, or asymmetric with a zero point"),
                Option("overrides", dict, default=None, check=_bits_glob_map, doc="module glob -> bits, first wins"),
                SKIP,
            ),
            doc="round-to-nearest fake quant written here: every step readable; mixed precision by overrides",
        ),
        BackendSchema(
            "bnb",
            (
                Option("bits", int, choices=(4, 8), doc="LLM.int8() or 4-bit"),
                Option("quant_type", str, default="nf4", choices=("nf4", "fp4"), applies=_is4, applies_doc="bits=4"),
                Option("double_quant", bool, default=False, applies=_is4, applies_doc="bits=4"),
                Option(
                    "compute_dtype", str, default="float32", choices=_FLOAT_DTYPES, applies=_is4, applies_doc="bits=4"
                ),
                SKIP,
            ),
            doc="bitsandbytes through transformers' BitsAndBytesConfig",
        ),
        BackendSchema(
            "quanto",
            (Option("weights", str, choices=("int8", "float8", "int4", "int2"), doc="weight dtype"), SKIP),
            doc="optimum-quanto through transformers' QuantoConfig (int4/int2 need torch.no_grad, not inference_mode)",
        ),
        BackendSchema(
            "torchao",
            (
                Option(
                    "method",
                    str,
                    choices=(
                        "int8_weight_only",
                        "int8_dynamic",
                        "float8_weight_only",
                        "intx_weight_only",
                        "int4_weight_only",
                    ),
                ),
                Option(
                    "bits",
                    int,
                    default=4,
                    choices=(1, 2, 3, 4, 5, 6, 7, 8),
                    applies=lambda c: c.get("method") == "intx_weight_only",
                    applies_doc="method=intx_weight_only",
                ),
                Option(
                    "group_size",
                    int,
                    default=32,
                    choices=(32, 64, 128, 256),
                    applies=_torchao_grouped,
                    applies_doc="method=intx_weight_only or int4_weight_only",
                ),
                SKIP,
            ),
            doc="torchao through transformers' TorchAoConfig with torchao config objects",
            gpu_only=lambda c: (
                "torchao Int4WeightOnlyConfig has no CPU path in torchao 0.18 (its weight conversion fails on CPU in "
                "every packing format); use method=intx_weight_only with bits=4 on CPU"
                if c.get("method") == "int4_weight_only"
                else None
            ),
        ),
        BackendSchema(
            "hqq",
            (
                Option("bits", int, choices=(1, 2, 3, 4, 8)),
                Option("group_size", int, default=64, choices=(32, 64, 128, 256)),
                Option("compute_dtype", str, default="float32", choices=_FLOAT_DTYPES),
                Option("axis", int, default=1, choices=(0, 1), doc="grouping axis (1: along input features)"),
                SKIP,
            ),
            doc="the hqq library driven directly (transformers 5 refuses HqqConfig)",
        ),
        BackendSchema(
            "gptq",
            (
                Option("bits", int, choices=(2, 3, 4, 8)),
                Option("group_size", int, default=128, choices=(-1, 32, 64, 128)),
                Option("sym", bool, default=True),
                Option("desc_act", bool, default=False),
                Option("calibration_samples", int, default=64, check=lambda v: None if v > 0 else "must be > 0"),
                SKIP,
            ),
            doc="GPTQ through transformers' GPTQConfig (optimum + gptqmodel 7.7), on CPU or CUDA",
        ),
    ]
}
ALIASES = {"none": "reference"}


@dataclass(frozen=True)
class QuantConfig:
    """A validated quant config: ``resolved`` holds every option with defaults filled in (lists as lists)."""

    name: str
    backend: str
    options: dict[str, Any] = field(default_factory=dict)
    note: str = ""

    @property
    def resolved(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "backend": self.backend, **self.options}
        if self.note:
            out["note"] = self.note
        return out

    def gpu_only_reason(self) -> str | None:
        return SCHEMAS[self.backend].gpu_only(self.options)


def _plain(value: Any) -> Any:
    """OmegaConf containers and tuples to plain dicts/lists, so configs hash and compare alike from YAML or code."""
    try:
        from omegaconf import DictConfig, ListConfig, OmegaConf

        if isinstance(value, DictConfig | ListConfig):
            return OmegaConf.to_container(value, resolve=True)
    except ImportError:  # pragma: no cover - omegaconf is a core dependency
        pass
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def _type_ok(value: Any, kind: type | tuple[type, ...]) -> bool:
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if isinstance(value, bool) and bool not in kinds:
        return False  # True is an int in Python; never accept it for bits
    return isinstance(value, kinds)


def validate_quant_config(cfg: Mapping[str, Any] | QuantConfig) -> QuantConfig:
    """Check ``cfg`` against its backend's schema and fill in defaults; raise :class:`QuantConfigError` otherwise."""
    if isinstance(cfg, QuantConfig):
        return cfg
    cfg = _plain(cfg)
    if not isinstance(cfg, Mapping):
        raise QuantConfigError(f"quant config must be a mapping with 'name' and 'backend', got {type(cfg).__name__}")
    backend = cfg.get("backend")
    if backend is None:
        raise QuantConfigError(f"quant.backend is missing; choose one of {sorted(SCHEMAS)}")
    backend = ALIASES.get(backend, backend)
    if backend not in SCHEMAS:
        raise QuantConfigError(f"quant.backend={backend!r} is unknown; choose one of {sorted(SCHEMAS)}")
    name = cfg.get("name")
    if not isinstance(name, str) or not name:
        raise QuantConfigError("quant.name is missing or empty; give the config a name (e.g. the YAML file's stem)")
    note = cfg.get("note", "")
    schema = SCHEMAS[backend]
    known = {o.name: o for o in schema.options}
    extra = sorted(set(cfg) - set(known) - {"backend", *LABEL_KEYS})
    if extra:
        raise QuantConfigError(
            f"quant.{extra[0]} is not an option of backend {backend!r}; its options are {sorted(known) or 'none'}"
        )
    resolved: dict[str, Any] = {}
    pending = list(schema.options)
    # Options without a condition first, so conditions can read them (e.g. quant_type applies only to bits=4).
    for opt in sorted(pending, key=lambda o: o.applies is not None):
        given = opt.name in cfg
        if opt.applies is not None and not opt.applies(resolved):
            if given:
                raise QuantConfigError(
                    f"quant.{opt.name} applies only when {opt.applies_doc} (backend {backend!r}); remove it"
                )
            continue
        if not given:
            if opt.default is REQUIRED:
                allowed = f"; allowed values: {list(opt.choices)}" if opt.choices else ""
                raise QuantConfigError(f"quant.{opt.name} is required by backend {backend!r}{allowed}")
            resolved[opt.name] = _plain(opt.default)
            continue
        value = cfg[opt.name]
        if value is not None or opt.default is not None:
            if not _type_ok(value, opt.kind):
                raise QuantConfigError(
                    f"quant.{opt.name}={value!r} has type {type(value).__name__}; backend {backend!r} expects "
                    f"{getattr(opt.kind, '__name__', opt.kind)}" + (f" in {list(opt.choices)}" if opt.choices else "")
                )
            if opt.choices is not None and value not in opt.choices:
                raise QuantConfigError(
                    f"quant.{opt.name}={value!r} is not supported by backend {backend!r}; allowed values: "
                    f"{list(opt.choices)}"
                )
            if opt.check is not None and (problem := opt.check(value)):
                raise QuantConfigError(f"quant.{opt.name}={value!r}: {problem}")
        resolved[opt.name] = _plain(value)
    ordered = {o.name: resolved[o.name] for o in schema.options if o.name in resolved}
    return QuantConfig(name=name, backend=backend, options=ordered, note=str(note or ""))


def quant_fingerprint(cfg: QuantConfig | Mapping[str, Any], reference_fingerprint: str) -> str:
    """Hash of the resolved config (labels excluded) and the reference fingerprint: equal iff the same quant."""
    qc = validate_quant_config(cfg)
    semantic = {k: v for k, v in qc.resolved.items() if k not in LABEL_KEYS}
    payload = json.dumps(semantic, sort_keys=True, default=str) + "|" + reference_fingerprint
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def conf_dir() -> Path:
    """The Hydra config directory: ``$QUANTFID_CONF_DIR`` or the repository's ``conf/``."""
    env = os.environ.get("QUANTFID_CONF_DIR")
    return Path(env) if env else Path(__file__).resolve().parents[3] / "conf"


def available_quant_configs() -> list[str]:
    return sorted(p.stem for p in (conf_dir() / "quant").glob("*.yaml"))


def load_quant_config(name: str) -> dict[str, Any]:
    """Read ``conf/quant/<name>.yaml`` as a plain dict (validated, not resolved: the file's own keys)."""
    import yaml

    path = conf_dir() / "quant" / f"{name}.yaml"
    if not path.is_file():
        raise QuantConfigError(f"quant={name!r}: no {path}; available configs: {available_quant_configs()}")
    data = yaml.safe_load(path.read_text()) or {}
    if not isinstance(data, dict):
        raise QuantConfigError(f"{path} must hold a mapping with 'name' and 'backend'")
    data.setdefault("name", name)
    validate_quant_config(data)
    return data


def cohort(name: str = "organism") -> list[str]:
    """The quant config names of ``conf/cohort/<name>.yaml`` (key ``quants``), each checked to exist and validate."""
    import yaml

    path = conf_dir() / "cohort" / f"{name}.yaml"
    if not path.is_file():
        found = sorted(p.stem for p in (conf_dir() / "cohort").glob("*.yaml"))
        raise QuantConfigError(f"cohort={name!r}: no {path}; available cohorts: {found}")
    data = yaml.safe_load(path.read_text()) or {}
    quants = data.get("quants") if isinstance(data, dict) else None
    if not isinstance(quants, list) or not all(isinstance(q, str) for q in quants):
        raise QuantConfigError(f"{path}: 'quants' must be a list of quant config names")
    for q in quants:
        load_quant_config(q)
    return list(quants)
