"""Register the backends; each imports its library only when a config of it is built."""

from __future__ import annotations

from quantfid.quant import bnb, gptq, hqq, quanto, reference, torchao  # noqa: F401  (registration)
from quantfid.quant.base import register
from quantfid.quant.rtn import _rtn_backend

register("rtn")(_rtn_backend)
