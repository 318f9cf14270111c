"""Run context provider: provenance tags (git commit, package versions) on every fluent MLflow run."""

from __future__ import annotations

import functools
import importlib.util
import subprocess
from importlib import metadata
from pathlib import Path

from mlflow.tracking.context.abstract_context import RunContextProvider

#: Distributions whose versions can change a number a run logs.
TRACKED_PACKAGES = (
    "quantfid",
    "torch",
    "transformers",
    "tokenizers",
    "mlflow",
    "hydra-core",
    "numpy",
    "bitsandbytes",
    "optimum-quanto",
    "hqq",
    "torchao",
    "optimum",
    "lm-eval",
)


@functools.cache
def git_commit() -> str:
    """HEAD of the checkout quantfid is imported from (``+dirty`` when tracked files changed), or ``unknown`` for an
    installed wheel or without quantfid."""
    spec = importlib.util.find_spec("quantfid")  # where the package lives, without importing it (and torch)
    if spec is None or spec.origin is None:
        return "unknown"
    root = Path(spec.origin).resolve().parent
    try:
        head = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return head + ("+dirty" if dirty else "")


@functools.cache
def package_versions() -> dict[str, str]:
    """Installed versions of :data:`TRACKED_PACKAGES`; packages that are not installed are left out."""
    out = {}
    for name in TRACKED_PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return out


def provenance_tags() -> dict[str, str]:
    """``quantfid.git_commit`` and ``quantfid.versions.<pkg>`` (the schema's provenance tags)."""
    tags = {"quantfid.git_commit": git_commit()}
    tags.update({f"quantfid.versions.{k}": v for k, v in package_versions().items()})
    return tags


class QuantfidRunContextProvider(RunContextProvider):
    """Applies to every run: provenance belongs on all of them, whoever starts them."""

    def in_context(self) -> bool:
        return True

    def tags(self) -> dict[str, str]:
        return provenance_tags()
