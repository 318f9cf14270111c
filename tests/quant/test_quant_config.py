"""Quant config validation: every bad input gets one clear error naming the field; YAMLs, cohort and fingerprint."""

from __future__ import annotations

import importlib
import pkgutil

import pytest
import yaml
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

import quantfid.quant as quant_pkg
from quantfid.api.paths import conf_dir
from quantfid.organism.cohort_table import main as cohort_table_main
from quantfid.quant import (
    QuantConfigError,
    available_quant_configs,
    backend_schemas,
    cohort,
    load_quant_config,
    quant_fingerprint,
    validate_quant_config,
)


@pytest.mark.parametrize(
    ("cfg", "match"),
    [
        ({"name": "x"}, r"quant\.backend is missing; choose one of \["),
        ({"name": "x", "backend": "nope"}, r"quant\.backend='nope' is unknown; choose one of \[.*'bnb'.*'rtn'"),
        ({"backend": "rtn", "bits": 4}, r"quant\.name is missing"),
        ({"name": "x", "backend": "rtn"}, r"quant\.bits is required by backend 'rtn'; allowed values: \[2, 3"),
        ({"name": "x", "backend": "rtn", "bits": 9}, r"quant\.bits=9 is not supported by backend 'rtn'; allowed"),
        ({"name": "x", "backend": "bnb", "bits": 3}, r"quant\.bits=3 .* backend 'bnb'; allowed values: \[4, 8\]"),
        ({"name": "x", "backend": "rtn", "bits": 4, "group_size": 48}, r"quant\.group_size=48 .*\[-1, 16, 32"),
        ({"name": "x", "backend": "hqq", "bits": 4, "group_size": 16}, r"quant\.group_size=16 .*'hqq'"),
        ({"name": "x", "backend": "quanto", "weights": "int3"}, r"quant\.weights='int3' .*\['int8', 'float8'"),
        ({"name": "x", "backend": "quanto", "weights": "int8", "bits": 8}, r"quant\.bits is not an option of"),
        ({"name": "x", "backend": "bnb", "bits": 4, "double_qant": True}, r"quant\.double_qant is not an option"),
        (
            {"name": "x", "backend": "bnb", "bits": 8, "quant_type": "nf4"},
            r"quant\.quant_type applies only when bits=4",
        ),
        ({"name": "x", "backend": "torchao", "method": "int8_weight_only", "bits": 4}, r"quant\.bits applies only"),
        ({"name": "x", "backend": "torchao", "method": "int5"}, r"quant\.method='int5' .*'int8_weight_only'"),
        ({"name": "x", "backend": "rtn", "bits": "4"}, r"quant\.bits='4' has type str; .* expects int"),
        ({"name": "x", "backend": "rtn", "bits": True}, r"quant\.bits=True has type bool"),
        ({"name": "x", "backend": "bnb", "bits": 4, "compute_dtype": "fp16"}, r"compute_dtype='fp16' .*'float32'"),
        ({"name": "x", "backend": "rtn", "bits": 4, "overrides": {"*.mlp.*": 1}}, r"quant\.overrides=.*bits in 2\.\.8"),
        ({"name": "x", "backend": "rtn", "bits": 4, "skip": "lm_head"}, r"quant\.skip='lm_head' has type str"),
        ({"name": "x", "backend": "rtn", "bits": 4, "skip": [1]}, r"quant\.skip=\[1\]: must be a list of module-name"),
        ({"name": "x", "backend": "gptq", "bits": 4, "calibration_samples": 0}, r"calibration_samples=0: must be > 0"),
        (["rtn"], r"must be a mapping"),
    ],
)
def test_bad_configs_fail_with_one_clear_error(cfg, match):
    with pytest.raises(QuantConfigError, match=match):
        validate_quant_config(cfg)


def test_defaults_are_filled_and_aliases_resolve():
    qc = validate_quant_config({"name": "n", "backend": "bnb", "bits": 4})
    assert qc.options == {
        "bits": 4,
        "quant_type": "nf4",
        "double_quant": False,
        "compute_dtype": "float32",
        "skip": ["lm_head"],
    }
    assert validate_quant_config({"name": "n", "backend": "bnb", "bits": 8}).options == {"bits": 8, "skip": ["lm_head"]}
    assert validate_quant_config({"name": "r", "backend": "none"}).backend == "reference"
    assert validate_quant_config({"name": "t", "backend": "torchao", "method": "int8_dynamic"}).options == {
        "method": "int8_dynamic",
        "skip": ["lm_head"],
    }


def test_omegaconf_input_resolves_like_a_dict():
    raw = {"name": "m", "backend": "rtn", "bits": 4, "overrides": {"*.mlp.*": 3}, "skip": ["lm_head", "*.q_proj"]}
    assert validate_quant_config(OmegaConf.create(raw)).resolved == validate_quant_config(raw).resolved


def test_fingerprint_hashes_semantics_and_reference():
    a = {"name": "a", "backend": "rtn", "bits": 4, "note": "x"}
    b = {"name": "b", "backend": "rtn", "bits": 4, "group_size": 64}  # same quant: default written out, other label
    assert quant_fingerprint(a, "ref1") == quant_fingerprint(b, "ref1")
    assert quant_fingerprint(a, "ref1") != quant_fingerprint(a, "ref2")
    assert quant_fingerprint(a, "ref1") != quant_fingerprint({**a, "bits": 3}, "ref1")
    assert len(quant_fingerprint(a, "ref1")) == 16


def test_every_yaml_validates_and_is_named_after_its_file():
    names = available_quant_configs()
    assert len(names) >= 30
    for name in names:
        raw = yaml.safe_load((conf_dir() / "quant" / f"{name}.yaml").read_text())
        assert raw["name"] == name, f"conf/quant/{name}.yaml names itself {raw['name']!r}"
        if "???" in raw.values():  # a template needing a value on the command line (quant=gguf_file quant.path=...)
            try:  # a backend may check the value at validation (gguf_file) or when it builds (checkpoint)
                load_quant_config(name)
            except QuantConfigError as err:
                assert "'???': is required" in str(err), err
            continue
        assert validate_quant_config(load_quant_config(name)).backend in backend_schemas()  # bases merged in


def test_unknown_config_and_cohort_names():
    with pytest.raises(QuantConfigError, match=r"quant='nope': no .*nope\.yaml; available configs: \["):
        load_quant_config("nope")
    with pytest.raises(QuantConfigError, match=r"cohort='nope': no .*; available cohorts: \['organism'"):
        cohort("nope")


def test_organism_cohort_spans_backends_and_runs_on_cpu():
    names = cohort("organism")
    assert len(set(names)) == len(names)
    configs = [validate_quant_config(load_quant_config(n)) for n in names]
    quants = [c for c in configs if c.backend != "reference"]
    assert len(quants) >= 28
    assert len({c.backend for c in quants}) >= 4
    assert names[0] == "reference"
    assert all(c.gpu_only_reason() is None for c in configs), "the organism cohort must run on CPU"


def test_hydra_composes_a_quant_group(tmp_path):
    """`quantfid-sweep quant=<name>` composes conf/quant/<name>.yaml under cfg.quant; it must validate unchanged."""
    from quantfid.sweep.configs import register_configs  # fidelity/base, as the app registers it (alone: not yet)

    register_configs()
    with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3"):
        cfg = compose(config_name="config", overrides=["quant=rtn_mix_attn8_mlp3"])
    qc = validate_quant_config(cfg.quant)
    assert qc.name == "rtn_mix_attn8_mlp3"
    assert qc.options["overrides"] == {"*.self_attn.*": 8, "*.mlp.*": 3}


@pytest.mark.parametrize("acc", ["-1", "201"])
def test_cohort_table_refuses_more_accuracy_prompts_than_the_held_out_sets(acc, capsys):
    with pytest.raises(SystemExit) as exc:
        cohort_table_main(["--acc", acc])  # before any model is loaded
    assert exc.value.code == 2
    assert "--acc must be between 0 and 200" in capsys.readouterr().err


def test_the_cohort_function_is_not_shadowed_by_a_submodule():
    # importing a submodule sets it as an attribute of its package: a submodule named like a public function of
    # quantfid.quant replaced that function for every later `from quantfid.quant import ...` (the sweep's resolver)
    for mod in pkgutil.iter_modules(quant_pkg.__path__):
        importlib.import_module(f"quantfid.quant.{mod.name}")
        assert mod.name not in quant_pkg.__all__, f"submodule {mod.name} shadows quantfid.quant.{mod.name}"
    from quantfid.quant import cohort as cohort_fn  # after the submodules were imported: still the function

    assert callable(cohort_fn) and "reference" in cohort_fn("organism")


def test_a_config_extending_a_base_composes_as_it_loads():
    """conf/quant/gguf_*.yaml extend _gguf_base.yaml (defaults list): Hydra's composition and load_quant_config agree,
    and the base is not a quant of its own."""
    from quantfid.sweep.configs import register_configs

    register_configs()  # fidelity/base, which the root config's default fidelity setting extends
    with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3"):
        cfg = compose(config_name="config", overrides=["quant=gguf_q4_k_m"])
    composed = OmegaConf.to_container(cfg.quant)
    assert composed == load_quant_config("gguf_q4_k_m")
    assert composed["backend"] == "gguf" and composed["runtime"] == "llama_cpp" and composed["type"] == "Q4_K_M"
    assert "_gguf_base" not in available_quant_configs()
    with pytest.raises(QuantConfigError, match=r"quant='_gguf_base': no "):
        load_quant_config("_gguf_base")
