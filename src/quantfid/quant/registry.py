"""The backend registry: a backend module registers its schema and its build function next to each other, and the
registry finds the modules itself (every module of :mod:`quantfid.quant.backends`, plus any installed package that
declares a ``quantfid.quant_backends`` entry point), so adding a backend is one module plus its YAML files.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable
from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import Any

from quantfid.quant.schema import BackendSchema, QuantConfigError

ENTRY_POINT_GROUP = "quantfid.quant_backends"
BACKENDS_PACKAGE = "quantfid.quant.backends"


@dataclass(frozen=True)
class Backend:
    """A registered backend: its option schema and the function that builds a quant (see ``quantfid.quant.base``)."""

    schema: BackendSchema
    build: Callable[..., Any]
    module: str


_REGISTRY: dict[str, Backend] = {}
_ALIASES: dict[str, str] = {}
_discovered = False


def register(schema: BackendSchema) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorator: register ``build`` under ``schema.backend`` (and its aliases). Re-registering a name from another
    module is an error: two backends must not silently shadow each other."""

    def wrap(build: Callable[..., Any]) -> Callable[..., Any]:
        existing = _REGISTRY.get(schema.backend)
        if existing is not None and existing.module != build.__module__:
            raise QuantConfigError(
                f"backend {schema.backend!r} is registered twice: by {existing.module} and by {build.__module__}"
            )
        _REGISTRY[schema.backend] = Backend(schema, build, build.__module__)
        for alias in schema.aliases:
            _ALIASES[alias] = schema.backend
        return build

    return wrap


def discover() -> None:
    """Import every backend module once: the package's own modules, then entry points of installed plugins."""
    global _discovered
    if _discovered:
        return
    package = importlib.import_module(BACKENDS_PACKAGE)
    for info in sorted(pkgutil.iter_modules(package.__path__), key=lambda m: m.name):
        if not info.name.startswith("_"):
            importlib.import_module(f"{BACKENDS_PACKAGE}.{info.name}")
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        ep.load()
    _discovered = True


def canonical(name: str) -> str:
    """The backend's registered name for ``name`` (resolving aliases such as ``none`` -> ``reference``)."""
    discover()
    return _ALIASES.get(name, name)


def get(name: str) -> Backend:
    discover()
    backend = _REGISTRY.get(_ALIASES.get(name, name))
    if backend is None:
        raise QuantConfigError(f"quant.backend={name!r} is unknown; choose one of {names()}")
    return backend


def names() -> list[str]:
    discover()
    return sorted(_REGISTRY)


def schemas() -> dict[str, BackendSchema]:
    discover()
    return {name: b.schema for name, b in sorted(_REGISTRY.items())}
