"""A new backend is one module plus one YAML: the registry finds the module itself, with no list to edit."""

from __future__ import annotations

import shutil
import textwrap

import pytest

import quantfid.quant.backends as backends_pkg
from quantfid.api.paths import conf_dir
from quantfid.quant import (
    QuantConfigError,
    backend_schemas,
    load_quant_config,
    quantize,
    registry,
    validate_quant_config,
)

TOY_BACKEND = '''
"""A toy backend written the way every real one is: its schema and its build function, side by side."""
import copy

from torch import nn

from quantfid.quant.backends.rtn import rtn_quantize_, rtn_storage_bits
from quantfid.quant.base import BackendResult, target_modules
from quantfid.quant.registry import register
from quantfid.quant.schema import SKIP, BackendSchema, Option

SCHEMA = BackendSchema("toy", (Option("bits", int, choices=(4, 8)), SKIP), doc="RTN under another name")


@register(SCHEMA)
def toy_backend(spec, cfg, reference):
    model = copy.deepcopy(reference.model)
    changed = set(rtn_quantize_(model, cfg.options["bits"], 64, skip=tuple(cfg.options["skip"])))
    ref = dict(reference.model.named_modules())

    def is_quantized(name: str, module: nn.Module) -> bool:
        return name in changed and not module.weight.equal(ref[name].weight)

    def storage_bits(name: str, module: nn.Module) -> int:  # a fake quant says what format it stands for
        return rtn_storage_bits(tuple(module.weight.shape), cfg.options["bits"], 64, True)

    return BackendResult(model, target_modules(model, cfg.options["skip"]), is_quantized, storage_bits=storage_bits)
'''


@pytest.fixture
def toy_backend_dir(tmp_path, monkeypatch):
    """A backend module that lives outside the package, on the backends package's search path."""
    folder = tmp_path / "more_backends"
    folder.mkdir()
    (folder / "toy.py").write_text(textwrap.dedent(TOY_BACKEND))
    monkeypatch.setattr(backends_pkg, "__path__", [*backends_pkg.__path__, str(folder)])
    monkeypatch.setattr(registry, "_discovered", False)
    yield folder
    registry._REGISTRY.pop("toy", None)
    import sys

    sys.modules.pop("quantfid.quant.backends.toy", None)


def test_a_backend_module_registers_itself_and_quantizes(
    toy_backend_dir, tiny_spec, tiny_reference, tmp_path, monkeypatch
):
    assert "toy" in backend_schemas()  # found by discovery, not by a list anyone edited
    with pytest.raises(QuantConfigError, match=r"quant\.bits=3 is not supported by backend 'toy'"):
        validate_quant_config({"name": "t", "backend": "toy", "bits": 3})
    # ... plus one YAML: a conf dir with conf/quant/toy_w4.yaml next to the shipped configs
    conf = tmp_path / "conf"
    shutil.copytree(conf_dir(), conf)
    (conf / "quant" / "toy_w4.yaml").write_text("name: toy_w4\nbackend: toy\nbits: 4\n")
    monkeypatch.setenv("QUANTFID_CONF_DIR", str(conf))
    q = quantize(tiny_spec, load_quant_config("toy_w4"), tiny_reference)
    assert q.config["backend"] == "toy" and q.verification["n_quantized"] == q.verification["n_intended"] > 0
    assert q.bits_per_weight == pytest.approx(4 + 16 / 64)  # codes + one fp16 scale per group of 64


def test_two_modules_cannot_register_one_name():
    schema = backend_schemas()["rtn"]
    with pytest.raises(QuantConfigError, match="registered twice"):
        registry.register(schema)(lambda spec, cfg, reference: None)
