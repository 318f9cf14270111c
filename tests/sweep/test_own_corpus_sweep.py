"""Your own corpus through the real CLI: its label, spec and content hash in the run's params, an edited file is a new
identity (not skipped as already FINISHED), a missing file is one clear error (the sweep's preflight) before the store
is touched."""

from __future__ import annotations

import mlflow
import pytest
from helpers import run_rows, run_sweep

from quantfid.api import schema as S

pytestmark = pytest.mark.slow

TEXT = "def mean(values):\n    return sum(values) / len(values)\n" * 60


def _args(tiny_model, path) -> list[str]:
    return [
        f"model.name_or_path={tiny_model}",
        "quant=rtn_w8_g128",
        f"fidelity.corpus={{source: text, path: '{path}', name: notes}}",
        "fidelity.context=64",
        "fidelity.max_tokens=128",
        "bench.tasks=[organism/choice]",
        "bench.limit=1",
    ]


def test_own_text_corpus_identity_and_bad_path(tiny_model, tmp_path):
    corpus = tmp_path / "notes.txt"
    corpus.write_text(TEXT)
    run_dir = tmp_path / "runs"
    db = run_dir / "mlflow.db"
    res = run_sweep(_args(tiny_model, corpus), run_dir)
    assert res.returncode == 0, res.stderr[-3000:]
    client = mlflow.MlflowClient(f"sqlite:///{db}")
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()], "tags.`quantfid.role` = 'quant'")
    assert len(runs) == 1 and runs[0].info.status == "FINISHED", runs[0].data.tags.get("quantfid.error")
    p = runs[0].data.params
    assert p[S.PARAM_CORPUS] == "notes" and p[S.PARAM_LOGPROB_DTYPE] == "float64"
    assert '"source": "text"' in p[S.PARAM_CORPUS_SOURCE] and len(p[S.PARAM_CORPUS_SHA256]) == 64
    assert runs[0].info.run_name == "rtn_w8_g128@notes.64" and runs[0].data.metrics["fid.kld_mean"] > 0

    assert "0 finished, 1 skipped" in (r := run_sweep(_args(tiny_model, corpus), run_dir)).stdout + r.stderr
    corpus.write_text(TEXT.replace("mean", "avg"))  # edited: a new identity, measured again
    res = run_sweep(_args(tiny_model, corpus), run_dir)
    assert "1 finished, 0 skipped" in res.stdout + res.stderr, res.stderr[-2000:]
    before = run_rows(db, "select count(*) from runs")[0][0]

    res = run_sweep(_args(tiny_model, tmp_path / "missing.txt"), run_dir)
    assert res.returncode == 2
    assert res.stderr.startswith("error: job #0") and "fidelity.corpus.path=" in res.stderr  # the preflight's one line
    assert "(source 'text'): no such file" in res.stderr
    jobs = run_rows(db, "select count(*) from runs r join tags t on t.run_uuid = r.run_uuid "
                    "where t.key = 'quantfid.role' and t.value = 'quant'")  # fmt: skip
    assert jobs[0][0] == 2 and run_rows(db, "select count(*) from runs")[0][0] == before  # the store untouched


def test_preflight_refuses_a_corpus_shorter_than_one_window(tmp_path):
    from quantfid.data.tokenizer import train_tokenizer
    from quantfid.sweep.preflight import PreflightError, check_corpus_windows, check_fidelity

    tok = train_tokenizer([TEXT], vocab_size=300)
    (tmp_path / "short.txt").write_text("too short")
    cfg = {"corpus": {"source": "text", "path": str(tmp_path / "short.txt")}, "context": 64, "max_tokens": 128}
    check_fidelity(cfg, None)  # readable and not empty: the model-free checks pass
    with pytest.raises(PreflightError, match=r"has \d+ tokens, fewer than one window of fidelity.context=64"):
        check_corpus_windows(cfg, tok)
    with pytest.raises(PreflightError, match=r"fidelity.corpus.field is required by corpus source 'jsonl'"):
        check_fidelity({**cfg, "corpus": {"source": "jsonl", "path": str(tmp_path / "short.txt")}}, None)
