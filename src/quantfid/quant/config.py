"""Quant configs: validation against the backend's schema before any model is loaded, the quant fingerprint, and
the config files (``conf/quant/<name>.yaml``, ``conf/cohort/<name>.yaml``)."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from omegaconf import DictConfig, ListConfig, OmegaConf

from quantfid.api.paths import conf_dir
from quantfid.quant import registry
from quantfid.quant.schema import REQUIRED, QuantConfigError

# Keys that label a config but do not change the quant: left out of the fingerprint.
LABEL_KEYS = ("name", "note")
REFERENCE_BACKEND = "reference"


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

    @property
    def is_reference(self) -> bool:
        """The unquantized reference itself (the cohort's anchor), not a quant of it."""
        return self.backend == REFERENCE_BACKEND

    def gpu_only_reason(self) -> str | None:
        return registry.get(self.backend).schema.gpu_only(self.options)


def _plain(value: Any) -> Any:
    """OmegaConf containers and tuples to plain dicts/lists, so configs hash and compare alike from YAML or code."""
    if isinstance(value, DictConfig | ListConfig):
        return OmegaConf.to_container(value, resolve=True)
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
        raise QuantConfigError(f"quant.backend is missing; choose one of {registry.names()}")
    backend = registry.canonical(str(backend))
    schema = registry.get(backend).schema
    name = cfg.get("name")
    if not isinstance(name, str) or not name:
        raise QuantConfigError("quant.name is missing or empty; give the config a name (e.g. the YAML file's stem)")
    note = cfg.get("note", "")
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
    if qc.is_reference:  # the reference "quant" is the reference itself: one identity for its outcomes and caches
        return reference_fingerprint
    semantic = {k: v for k, v in qc.resolved.items() if k not in LABEL_KEYS}
    extra = registry.get(qc.backend).schema.identity
    if extra is not None:
        semantic["identity"] = extra(qc.options)
    payload = json.dumps(semantic, sort_keys=True, default=str) + "|" + reference_fingerprint
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


# conf/quant/_<name>.yaml is a base other configs extend (``defaults: [_<name>, _self_]``, as Hydra composes them):
# not a quant itself
BASE_PREFIX = "_"


def available_quant_configs() -> list[str]:
    return sorted(p.stem for p in (conf_dir() / "quant").glob("*.yaml") if not p.stem.startswith(BASE_PREFIX))


def _read_quant_yaml(path: Path, seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """The file's keys merged over the bases its ``defaults`` list names (Hydra's order: ``_self_`` last unless
    placed), so ``load_quant_config`` and ``quantfid-sweep quant=<name>`` see the same config."""
    if path in seen:
        raise QuantConfigError(f"{path}: its defaults list includes itself ({' -> '.join(p.stem for p in seen)})")
    data = yaml.safe_load(path.read_text()) or {}
    if not isinstance(data, dict):
        raise QuantConfigError(f"{path} must hold a mapping with 'name' and 'backend'")
    defaults = data.pop("defaults", None)
    if not defaults:
        return data
    if not isinstance(defaults, list) or not all(isinstance(d, str) for d in defaults):
        raise QuantConfigError(f"{path}: 'defaults' must be a list of base config names (e.g. [_gguf_base, _self_])")
    order = defaults if "_self_" in defaults else [*defaults, "_self_"]
    merged = OmegaConf.create()
    for entry in order:
        if entry == "_self_":
            merged = OmegaConf.merge(merged, data)
            continue
        base = path.parent / f"{entry}.yaml"
        if not base.is_file():
            raise QuantConfigError(f"{path}: defaults entry {entry!r} has no {base}")
        merged = OmegaConf.merge(merged, _read_quant_yaml(base, (*seen, path)))
    return OmegaConf.to_container(merged, resolve=True)


def load_quant_config(name: str) -> dict[str, Any]:
    """Read ``conf/quant/<name>.yaml`` as a plain dict (its bases merged in; validated, not resolved)."""
    path = conf_dir() / "quant" / f"{name}.yaml"
    if name.startswith(BASE_PREFIX) or not path.is_file():
        raise QuantConfigError(f"quant={name!r}: no {path}; available configs: {available_quant_configs()}")
    data = _read_quant_yaml(path)
    data.setdefault("name", name)
    validate_quant_config(data)
    return data


def cohort(name: str = "organism") -> list[str]:
    """The quant config names of ``conf/cohort/<name>.yaml`` (key ``quants``), each checked to exist and validate."""
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
