from __future__ import annotations

import pytest
from helpers import build_tiny_model


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory):
    """Any model will do for the wiring: a random tiny Llama with its own small BPE, saved like a checkpoint."""
    return build_tiny_model(tmp_path_factory.mktemp("tiny") / "model")
