"""Load stage: reference and quantized model loading, fingerprints."""

from quantfid.models.loading import (
    ModelLoadError,
    ModelSpec,
    Reference,
    load_model,
    load_reference,
    load_tokenizer,
    model_fingerprint,
    organism_path,
    tokenizer_fingerprint,
)

__all__ = [
    "ModelLoadError",
    "ModelSpec",
    "Reference",
    "load_model",
    "load_reference",
    "load_tokenizer",
    "model_fingerprint",
    "organism_path",
    "tokenizer_fingerprint",
]
