"""How a backend declares its options: each backend module builds one :class:`BackendSchema` next to its code.

A quant config is a plain mapping (one YAML per config under ``conf/quant/``): ``name``, ``backend``, then the
backend's options. Validation (:mod:`quantfid.quant.config`) checks it against the backend's schema and fills in the
defaults, so a typo or an unsupported value fails in a second with one error naming the field and the allowed values,
instead of minutes later inside a library.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

REQUIRED = object()  # sentinel: an option without a default
FLOAT_DTYPES = ("float32", "bfloat16", "float16")


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


@dataclass(frozen=True)
class BackendSchema:
    """The options a backend accepts. ``gpu_only`` returns the reason a config needs CUDA (None if it does not);
    ``aliases`` are other names the ``backend:`` key may use. ``module_classes``: the kinds of weight module the
    backend really replaces (``"Linear"``: any ``nn.Linear``; ``"Conv1D"``: transformers' GPT-2-style ``Conv1D``); a
    model whose targets include another kind is refused before anything is built (quantfid.quant.base)."""

    backend: str
    options: tuple[Option, ...]
    doc: str = ""
    gpu_only: Callable[[Mapping[str, Any]], str | None] = lambda cfg: None
    aliases: tuple[str, ...] = ()
    module_classes: tuple[str, ...] = ("Linear",)
    # extra identity of a quant beyond its options (e.g. the content of a checkpoint directory): hashed into the
    # quant fingerprint, so an edited checkpoint is a new quant
    identity: Callable[[Mapping[str, Any]], Any] | None = None


def check_bits_glob_map(value: Any) -> str | None:
    if not isinstance(value, Mapping):
        return "must be a mapping of module-name glob -> bits, e.g. {'*.self_attn.*': 8, '*.mlp.*': 3}"
    for k, v in value.items():
        if not isinstance(k, str) or isinstance(v, bool) or not isinstance(v, int) or not 2 <= v <= 8:
            return f"entry {k!r}: {v!r} must map a glob (str) to bits in 2..8"
    return None


def check_str_list(value: Any) -> str | None:
    if not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):
        return "must be a list of module-name globs (e.g. ['lm_head'])"
    return None


SKIP = Option(
    "skip",
    (list, tuple),
    default=("lm_head",),
    check=check_str_list,
    doc="module-name globs left in full precision (default: lm_head)",
)
