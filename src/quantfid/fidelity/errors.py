"""The errors of the fidelity stage (one module, so that settings and corpora share them without a cycle)."""

from __future__ import annotations


class FidelityError(ValueError):
    """Bad input to the fidelity stage; the message names the field, what was wrong and what to do."""


class TokenizerMismatchError(FidelityError):
    """The quant's tokenizer is not the one the reference cache was built with."""


class CacheMismatchError(FidelityError):
    """A reference cache on disk or in the store does not match what was asked for, or its content is corrupt."""
