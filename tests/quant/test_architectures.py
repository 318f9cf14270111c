"""The architecture matrix: seeded random checkpoints of four architectures (saved with ``save_pretrained``) through
the real sweep, ``experiment=smoke model=hf``, with one config of every CPU backend as one multirun per architecture.

Every cell is FINISHED with moved logits (mean KLD > 0) and its true bits per weight, or FAILED with a clear refusal
naming backend and architecture. Tiny models, one 128-token window and one choice prompt keep it to about a minute of
CPU per architecture.
"""

from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path

import pytest

from quantfid.api import schema as S
from quantfid.data import tasks
from quantfid.models.random import save_random_model

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "sweep"))
from helpers import run_sweep

pytestmark = pytest.mark.slow

HAS_GPTQ = importlib.util.find_spec("gptqmodel") is not None

#: quant config -> (lowest, highest) effective bits per weight of its format over a float32 reference
QUANTS = {
    "reference": (32.0, 32.0),
    "rtn_w4_g128": (4.125, 4.125),  # 4-bit codes + an fp16 scale per 128 weights
    "bnb_nf4": (4.5, 4.6),  # + an fp32 absmax per 64 weights (+ the 16-entry code book per module)
    "quanto_int8": (8.0, 8.5),  # + a scale per output row
    "torchao_int8_wo": (8.0, 8.5),
    "hqq_w4_g64": (5.0, 5.0),  # + fp32 scale and zero per 64 weights
    "gptq_w4_g128_cal8": (4.0, 4.6),
}
#: (architecture, quant) cells refused, and the refusal's words
REFUSED = {
    ("gpt2", "quanto_int8"): r"backend 'quanto' cannot quantize GPT2LMHeadModel: it replaces only \['Linear'\]",
    ("gpt2", "torchao_int8_wo"): r"backend 'torchao' cannot quantize GPT2LMHeadModel: it replaces only \['Linear'\]",
}
if not HAS_GPTQ:
    for arch in ("llama", "gpt2", "qwen3", "mistral"):
        REFUSED[(arch, "gptq_w4_g128_cal8")] = r"needs gptqmodel"


@pytest.fixture(scope="module")
def texts() -> list[str]:
    return [i.prompt + i.answer for f in tasks.FAMILIES for i in tasks.heldout_set(f, 40)] * 3


@pytest.mark.parametrize("arch", ["llama", "gpt2", "qwen3", "mistral"])
def test_every_backend_on_every_architecture(arch, texts, tmp_path):
    import mlflow

    model_dir = save_random_model(tmp_path / arch, arch, texts, vocab_size=320)
    run_dir = tmp_path / "runs"
    res = run_sweep(
        [
            "-m",
            "experiment=smoke",
            "model=hf",
            f"model.name_or_path={model_dir}",
            "quant=" + ",".join(QUANTS),
            "fidelity.max_tokens=128",
            "bench.tasks=[organism/choice]",
            "bench.limit=1",
            "sweep.allow_failures=true",  # refused cells are FAILED runs; without this the sweep exits 1
        ],
        run_dir,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    client = mlflow.MlflowClient(f"sqlite:///{run_dir / 'mlflow.db'}")
    exp = client.get_experiment_by_name("quantfid-smoke")
    runs = client.search_runs([exp.experiment_id], f"tags.`{S.TAG_ROLE}` != 'sweep'")
    cells = {r.data.tags[S.TAG_QUANT_NAME]: r for r in runs}
    assert set(cells) == set(QUANTS), sorted(cells)
    for quant, (lo, hi) in QUANTS.items():
        run = cells[quant]
        refusal = REFUSED.get((arch, quant))
        error = run.data.tags.get(S.TAG_ERROR, "")
        if refusal:
            assert run.info.status == "FAILED" and re.search(refusal, error), (quant, run.info.status, error)
            continue
        assert run.info.status == "FINISHED", (arch, quant, error)
        bits, kld = run.data.metrics[S.METRIC_BITS_PER_WEIGHT], run.data.metrics["fid.kld_mean"]
        assert lo - 1e-6 <= bits <= hi + 1e-6, (arch, quant, bits)
        if quant == "reference":
            assert kld == 0.0
        else:
            assert kld > 0.0, (arch, quant, "the logits did not move")
