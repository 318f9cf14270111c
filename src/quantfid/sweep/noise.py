"""Known-harmless start-up noise, silenced by targeted logging filters (one logger, one message each; nothing else
from those loggers is hidden).

Measured on this stack (torch 2.13.0+cpu, torchao 0.18): importing torchao logs ``Failed to load .../_C_mxfp8...so``
and ``Failed to load .../_C_cutlass_90a.abi3.so`` (CUDA-only kernels that a CPU wheel cannot load; the CPU paths do
not use them), and torch's pytree logs ``<enum 'KernelPreference'> is an Enum subclass and is now natively supported
by torch.compile ... deprecated`` for an Enum torchao registers. Neither says anything a user can act on.
"""

from __future__ import annotations

import logging
import re

#: (logger name, regular expression of the message) pairs that are dropped.
KNOWN_NOISE: tuple[tuple[str, str], ...] = (
    ("torchao", r"^Failed to load .*/torchao/_C_(mxfp8|cutlass_\w+)[^/]*\.so"),
    ("torch.utils._pytree", r"is an Enum subclass and is now natively supported by torch\.compile"),
)


class _DropMatching(logging.Filter):
    def __init__(self, pattern: str) -> None:
        super().__init__()
        self.pattern = re.compile(pattern)

    def filter(self, record: logging.LogRecord) -> bool:
        return not self.pattern.search(record.getMessage())


def quiet_known_noise() -> None:
    """Install the filters (idempotent); call before torchao is imported."""
    for name, pattern in KNOWN_NOISE:
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropMatching) and f.pattern.pattern == pattern for f in logger.filters):
            logger.addFilter(_DropMatching(pattern))
