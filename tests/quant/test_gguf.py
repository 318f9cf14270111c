"""GGUF quants made by llama.cpp itself, on tiny random models: export round trip, quantize + verify, both runtimes,
the importance matrix, the user's own files, and every refusal. Needs the gguf extra (gguf + llama-cpp-python)."""

from __future__ import annotations

import signal
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from quantfid.api.divergence import token_kld
from quantfid.models import ModelSpec, load_reference
from quantfid.quant import QuantConfigError, QuantUnavailableError, quantize, validate_quant_config
from quantfid.quant.base import probe_batch, probe_logits
from quantfid.quant.config import quant_fingerprint

gguf = pytest.importorskip("gguf")
pytest.importorskip("llama_cpp")

from quantfid.quant.gguf import quantize as gq  # noqa: E402
from quantfid.quant.gguf.export import UnsupportedArchitectureError, export_gguf, permute_qk  # noqa: E402
from quantfid.quant.gguf.imatrix import calibration_chunks, collect, write_imatrix  # noqa: E402
from quantfid.quant.gguf.runtime import LlamaCppModel, load_transformers  # noqa: E402

TEXTS = ["def f(x):\n    return x + 1\n" * 50, "Q: 7 * 8 = ? A: 56 reverse: stone\n" * 50]


@pytest.fixture(autouse=True)
def _own_cache(tmp_path_factory, monkeypatch):
    """GGUF files go to a per-session cache (never the user's)."""
    monkeypatch.setenv("QUANTFID_CACHE", str(tmp_path_factory.getbasetemp() / "gguf_cache"))


@pytest.fixture(scope="module")
def qwen3_reference(tmp_path_factory):
    from quantfid.models.random import save_random_qwen3

    return load_reference(ModelSpec(str(save_random_qwen3(tmp_path_factory.mktemp("tiny_qwen3"), TEXTS))))


def _logits(model, ids):
    return probe_logits(model, ids)


@pytest.mark.parametrize("which", ["llama", "qwen3"])
def test_f32_export_round_trip_and_both_runtimes_agree(which, tiny_reference, qwen3_reference, tmp_path):
    """An F32 GGUF holds the reference exactly: dequantized in torch its logits are the reference's bit for bit,
    and llama.cpp's kernels agree with them (KLD ~ 0, same top-1)."""
    ref = tiny_reference if which == "llama" else qwen3_reference
    path = export_gguf(ref.model, ref.tokenizer, tmp_path / "ref-f32.gguf")
    ids = probe_batch(ref)
    want = _logits(ref.model, ids)
    tf = load_transformers(path, ref.spec)
    assert torch.equal(_logits(tf, ids), want)
    cpp = LlamaCppModel(path, ref.model.config)
    got = _logits(cpp, ids)
    kld = token_kld(want, got)
    assert kld.max().item() < 1e-6
    diff = (got - want).abs().max().item()
    assert diff < 1e-3
    top2 = want.topk(2, dim=-1).values
    clear = (top2[..., 0] - top2[..., 1]) > 2 * diff  # a random model has near ties; float32 sums may swap those
    assert clear.float().mean() > 0.8
    assert torch.equal(got.argmax(-1)[clear], want.argmax(-1)[clear])


def test_permutation_is_llama_cpps():
    """The q/k row permutation of convert_hf_to_gguf.py, against its definition written out for 2 heads of 4 rows."""
    w = np.arange(16, dtype=np.float32).reshape(8, 2)
    # per head, rows (0, 1, 2, 3) -> (0, 2, 1, 3): the halves of the rotary pairs interleaved
    want = w[[0, 2, 1, 3, 4, 6, 5, 7]]
    assert np.array_equal(permute_qk(w, 2), want)


@pytest.mark.parametrize(
    ("file_type", "lo", "hi"),
    [("Q8_0", 8.4, 8.6), ("Q4_K_M", 4.5, 6.0), ("IQ4_XS", 4.2, 5.5), ("Q2_K", 2.6, 4.5), ("IQ2_XS", 2.3, 4.5)],
)
def test_quantize_and_verify(file_type, lo, hi, tiny_spec, tiny_reference):
    cfg = {"name": f"g_{file_type}", "backend": "gguf", "type": file_type}
    q = quantize(tiny_spec, cfg, tiny_reference)
    v = q.verification
    assert v["n_intended"] == v["n_quantized"] == 15  # every Linear, lm_head included (llama.cpp's output tensor)
    assert v["skipped"] == []
    assert v["probe_kld_mean"] > 0 and v["logits_max_abs_diff"] > 0
    assert lo < q.bits_per_weight < hi, q.bits_per_weight
    assert v["runtime"] == "llama_cpp" and Path(v["gguf_file"]).is_file()
    assert all(k.startswith("LlamaCppModel/") for k in v["module_types"])
    assert (v["imatrix_sha"] != "") == (file_type == "IQ2_XS")  # imatrix: null -> on for the 1-3 bit I-quants only
    # bits per weight counted from the file's own tensors
    facts = gq.read_facts(Path(v["gguf_file"]))
    linear = [n for n in facts.tensor_types if n.startswith("blk.") and not n.endswith("norm.weight")]
    linear.append("output.weight")
    want = sum(facts.tensor_bytes[n] * 8 for n in linear) / sum(facts.tensor_numel[n] for n in linear)
    assert q.bits_per_weight == pytest.approx(want)
    assert q.model_bytes == facts.total_bytes
    if file_type == "Q8_0":
        assert set(facts.tensor_types[n] for n in linear) == {"Q8_0"}
        assert q.bits_per_weight == pytest.approx(8.5)  # 32 int8 codes + one fp16 scale per block
    # cached: the second build reads the file back
    again = quantize(tiny_spec, cfg, tiny_reference)
    assert again.verification["gguf_quantize_seconds"] == 0.0
    assert again.verification["gguf_file"] == v["gguf_file"]


def test_runtimes_differ_only_by_the_kernels(tiny_spec, tiny_reference):
    """Same file, two runtimes: transformers dequantizes (weight rounding only), llama.cpp also quantizes the
    activations; both are close to each other compared with their distance to the reference."""
    base = {"backend": "gguf", "type": "Q4_K_M"}
    cpp = quantize(tiny_spec, {**base, "name": "cpp"}, tiny_reference)
    tf = quantize(tiny_spec, {**base, "name": "tf", "runtime": "transformers"}, tiny_reference)
    assert cpp.verification["gguf_file"] == tf.verification["gguf_file"]
    assert cpp.bits_per_weight == tf.bits_per_weight
    assert cpp.fingerprint != tf.fingerprint
    ids = probe_batch(tiny_reference)
    a, b = _logits(cpp.model, ids), _logits(tf.model, ids)
    gap = token_kld(b, a).mean().item()
    assert 0 < gap < 0.5 * tf.verification["probe_kld_mean"]


def test_llama_cpp_runtime_generates_greedily_like_the_bench_calls_it(tiny_spec, tiny_reference):
    """``generate`` on a left-padded batch returns what transformers' would: the input then greedy new tokens; the
    F32 export generates exactly the reference's tokens."""
    from quantfid.bench.scoring import generate_until

    ref = tiny_reference
    path = gq.source_file(ref, "F32")
    cpp = LlamaCppModel(path, ref.model.config)
    prompts = ["def f(x):\n", "Q: 7 * 8 = ? A:"]
    want = generate_until(ref.model, ref.tokenizer, prompts, max_new_tokens=6, stop=["\n\n"], batch_size=2)
    got = generate_until(cpp, ref.tokenizer, prompts, max_new_tokens=6, stop=["\n\n"], batch_size=2)
    assert got == want


def test_imatrix_file_holds_the_squared_activations(tiny_reference, tmp_path):
    """in_sum2 / counts per input column, written as llama.cpp's GGUF imatrix, equal an independent float64 sum."""
    chunks = calibration_chunks(tiny_reference, 2, 32)
    assert chunks.shape == (2, 32) and (chunks[:, 0] == tiny_reference.tokenizer.bos_token_id).all()
    stats = collect(tiny_reference, chunks)
    path = write_imatrix(stats, tmp_path / "imatrix.gguf", "test", 32)
    reader = gguf.GGUFReader(str(path))
    assert reader.fields["general.type"].contents() == "imatrix"
    assert reader.fields["imatrix.chunk_size"].contents() == 32
    tensors = {t.name: np.asarray(t.data) for t in reader.tensors}
    # independent: the input of layer 0's down projection is act(gate(x)) * up(x) of its post-attention norm
    captured = {}
    mlp = tiny_reference.model.model.layers[0].mlp
    def keep(_module, args):  # returns None: the input is recorded, not replaced
        captured["x"] = args[0].double()

    handle = mlp.down_proj.register_forward_pre_hook(keep)
    with torch.no_grad():
        tiny_reference.model(input_ids=chunks)
    handle.remove()
    x = captured["x"].reshape(-1, captured["x"].shape[-1])
    assert np.allclose(tensors["blk.0.ffn_down.weight.in_sum2"].reshape(-1), (x * x).sum(0).numpy(), rtol=1e-5)
    assert tensors["blk.0.ffn_down.weight.counts"].reshape(-1)[0] == 64
    # and the child's reading of it is llama-quantize's: in_sum2 / counts
    sys.path.insert(0, str(gq.CHILD.parent))
    try:
        from _child import load_imatrix
    finally:
        sys.path.pop(0)
    e = load_imatrix(str(path))["blk.0.ffn_down.weight"]
    assert np.allclose(e, (x * x).sum(0).numpy() / 64, rtol=1e-5)


def test_the_users_own_file_is_a_quant_of_its_reference(tiny_spec, tiny_reference):
    made = quantize(tiny_spec, {"name": "m", "backend": "gguf", "type": "Q5_K_M"}, tiny_reference)
    path = made.verification["gguf_file"]
    q = quantize(tiny_spec, {"name": "mine", "backend": "gguf_file", "path": path}, tiny_reference)
    assert q.bits_per_weight == made.bits_per_weight and q.model_bytes == made.model_bytes
    assert q.verification["probe_kld_mean"] == pytest.approx(made.verification["probe_kld_mean"])


def test_the_users_file_is_identified_by_its_bytes_not_its_path(tmp_path):
    """A .gguf replaced at the same path is another quant: the fingerprint (run skip, caches) follows the content."""
    path = tmp_path / "model.gguf"
    cfg = {"name": "mine", "backend": "gguf_file", "path": str(path)}
    path.write_bytes(b"GGUF" + b"\x00" * 64)
    first = quant_fingerprint(cfg, "ref")
    assert quant_fingerprint(cfg, "ref") == first
    path.write_bytes(b"GGUF" + b"\x01" * 65)
    assert quant_fingerprint(cfg, "ref") != first


def test_refusals_before_anything_runs(tmp_path):
    with pytest.raises(QuantConfigError, match=r"quant\.type='Q9_K': the installed llama\.cpp .* does not know"):
        validate_quant_config({"name": "x", "backend": "gguf", "type": "Q9_K"})
    with pytest.raises(QuantConfigError, match=r"quant\.runtime='vllm' is not supported .*'llama_cpp', 'transformers'"):
        validate_quant_config({"name": "x", "backend": "gguf", "type": "Q4_0", "runtime": "vllm"})
    with pytest.raises(QuantConfigError, match=r"quant\.imatrix_chunks applies only when an importance matrix"):
        validate_quant_config({"name": "x", "backend": "gguf", "type": "Q4_0", "imatrix_chunks": 8})
    not_gguf = tmp_path / "model.gguf"
    not_gguf.write_bytes(b"PK\x03\x04 not a gguf")
    with pytest.raises(QuantConfigError, match=r"quant\.path=.* is not a GGUF file"):
        validate_quant_config({"name": "x", "backend": "gguf_file", "path": str(not_gguf)})
    with pytest.raises(QuantConfigError, match=r"quant\.path=.*: no such file"):
        validate_quant_config({"name": "x", "backend": "gguf_file", "path": str(tmp_path / "nope.gguf")})


def test_imatrix_off_for_a_type_that_needs_one(tiny_spec, tiny_reference):
    with pytest.raises(QuantConfigError, match=r"quant\.imatrix=false: llama\.cpp makes IQ2_XS only with"):
        quantize(tiny_spec, {"name": "x", "backend": "gguf", "type": "IQ2_XS", "imatrix": False}, tiny_reference)


def test_unsupported_architecture_is_refused(tmp_path):
    from transformers import GPT2Config, GPT2LMHeadModel

    from quantfid.data.tokenizer import train_tokenizer

    tok = train_tokenizer(TEXTS, vocab_size=300)
    GPT2LMHeadModel(GPT2Config(vocab_size=len(tok), n_embd=64, n_layer=1, n_head=2, n_positions=64)).save_pretrained(
        tmp_path
    )
    tok.save_pretrained(tmp_path)
    spec = ModelSpec(str(tmp_path))
    with pytest.raises(UnsupportedArchitectureError, match=r"model_type='gpt2' .* mapped: \['llama', 'qwen3'\]"):
        quantize(spec, {"name": "x", "backend": "gguf", "type": "Q4_0"})


def test_a_file_of_another_model_is_refused(tiny_spec, tiny_reference, qwen3_reference, tmp_path):
    # architecture: a Qwen3 file offered as a quant of the Llama reference
    qwen_file = export_gguf(qwen3_reference.model, qwen3_reference.tokenizer, tmp_path / "qwen.gguf")
    with pytest.raises(QuantConfigError, match=r"architecture is 'qwen3' but the reference .* is 'llama'"):
        quantize(tiny_spec, {"name": "x", "backend": "gguf_file", "path": str(qwen_file)}, tiny_reference)
    # vocabulary: the same architecture and shapes, a tokenizer trained on other text
    import json as json_module  # any varied text: a BPE of exactly the reference's size, other merges

    from quantfid.models.random import save_random_llama

    other_dir = save_random_llama(
        tmp_path / "other",
        [Path(json_module.__file__).read_text()],
        vocab_size=tiny_reference.model.config.vocab_size,
        hidden_size=256,
        intermediate_size=768,
        num_attention_heads=4,
        tie_word_embeddings=False,
    )
    other = load_reference(ModelSpec(str(other_dir)))
    assert other.model.config.vocab_size == tiny_reference.model.config.vocab_size
    other_file = export_gguf(other.model, other.tokenizer, tmp_path / "other.gguf")
    with pytest.raises(QuantConfigError, match=r"vocabulary mismatch at token id \d+: the file has"):
        quantize(tiny_spec, {"name": "x", "backend": "gguf_file", "path": str(other_file)}, tiny_reference)


def test_a_crash_in_native_code_is_a_refusal_not_a_dead_process(tmp_path):
    """A child that dies of SIGSEGV (as a native build for another CPU does in llama_decode) becomes one error."""
    script = tmp_path / "crash.py"
    script.write_text("import os, signal\nos.kill(os.getpid(), signal.SIGSEGV)\n")
    with pytest.raises(QuantUnavailableError, match=rf"llama\.cpp crashed \({signal.SIGSEGV.name}\) .* portable"):
        gq.run_child("probe", {}, "runtime=llama_cpp on x.gguf", script=script)


def test_llama_cpp_runtime_continues_its_kv_cache_like_a_causal_lm(tiny_reference):
    """The perf stage's decode loop (``past_key_values`` handed back) continues llama.cpp's KV cache: the logits of
    a token fed after a prefix equal those of the whole sequence at that position."""
    from quantfid.bench.perf import PerfWorkload, measure_perf

    ref = tiny_reference
    cpp = LlamaCppModel(gq.source_file(ref, "F32"), ref.model.config)
    ids = probe_batch(ref)[:, :12]
    whole = cpp(input_ids=ids).logits
    first = cpp(input_ids=ids[:, :8], use_cache=True)
    past = first.past_key_values
    for i in range(8, 12):
        step = cpp(input_ids=ids[:, i : i + 1], past_key_values=past, use_cache=True)
        past = step.past_key_values
        assert torch.allclose(step.logits[0, -1], whole[0, i], atol=1e-4)
    perf = measure_perf(cpp, PerfWorkload(prompt_tokens=16, new_tokens=4, batch=1, repeats=1))
    assert perf.metrics()
