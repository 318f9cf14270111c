"""Speed and memory of a model on a fixed small workload: what a quant costs to run, beside what it costs to store.

The workload is fixed so numbers compare across quants of one reference: a batch of ``batch`` sequences of
``prompt_tokens`` token ids (a deterministic pattern, no tokenizer needed) is prefilled, then ``new_tokens`` tokens are
decoded greedily one at a time with the KV cache. After one untimed warm-up pass, prefill tokens/s = batch x
prompt_tokens / prefill seconds and decode tokens/s = batch x new_tokens / decode seconds (the best of ``repeats``
passes: the least disturbed by other processes on a shared machine).

Peak memory is that of the workload: on CUDA ``torch.cuda.max_memory_allocated`` after a reset of the peak counter; on
CPU the process's resident-set high-water mark (``VmHWM``) after resetting it (``/proc/self/clear_refs``, Linux >= 4.0),
which includes the model's weights and everything else the process holds. Where the reset is impossible the lifetime
peak (``resource.getrusage``) is reported and the method tag says so.

Fake-quant backends (RTN keeps float weights that hold quantized values) and backends without CPU kernels run at
full-precision speed or slower on CPU: their numbers are what this machine does, not a deployment speed.
"""

from __future__ import annotations

import resource
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from quantfid.api.schema import METRIC_DECODE_TPS, METRIC_PEAK_MEM, METRIC_PERF_SECONDS, METRIC_PREFILL_TPS


@dataclass(frozen=True)
class PerfWorkload:
    """The fixed workload (the ``perf`` config node: prompt_tokens, new_tokens, batch, repeats)."""

    prompt_tokens: int = 64
    new_tokens: int = 16
    batch: int = 1
    repeats: int = 2

    def __post_init__(self) -> None:
        for name in ("prompt_tokens", "new_tokens", "batch", "repeats"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"perf.{name}={value!r} must be an integer >= 1")

    @property
    def label(self) -> str:
        return f"{self.batch}x{self.prompt_tokens}+{self.new_tokens}"


@dataclass(frozen=True)
class PerfResult:
    prefill_tokens_per_s: float
    decode_tokens_per_s: float
    peak_memory_bytes: int
    memory_method: str  # "cuda_max_allocated" | "rss_hwm" | "rss_lifetime_peak"
    seconds: float  # wall time of the whole measurement
    workload: str = ""  # PerfWorkload.label

    def metrics(self) -> dict[str, float]:
        return {
            METRIC_PREFILL_TPS: self.prefill_tokens_per_s,
            METRIC_DECODE_TPS: self.decode_tokens_per_s,
            METRIC_PEAK_MEM: float(self.peak_memory_bytes),
            METRIC_PERF_SECONDS: self.seconds,
        }


def _status_kib(field: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def _reset_rss_peak() -> bool:
    """Reset the process's RSS high-water mark to its current RSS (Linux: ``echo 5 > /proc/self/clear_refs``)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return _status_kib("VmHWM") is not None


def _input_ids(model: torch.nn.Module, workload: PerfWorkload, device: torch.device) -> torch.Tensor:
    vocab = int(getattr(model.config, "vocab_size", 256) or 256)
    n = workload.batch * workload.prompt_tokens
    ids = (torch.arange(n, dtype=torch.long) * 7919 + 13) % max(vocab - 1, 1) + 1  # no special-token 0
    return ids.view(workload.batch, workload.prompt_tokens).to(device)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.no_grad()
def _one_pass(model: torch.nn.Module, ids: torch.Tensor, new_tokens: int) -> tuple[float, float]:
    """Seconds of the prefill and of ``new_tokens`` greedy decode steps with the KV cache."""
    device = ids.device
    _sync(device)
    t0 = time.perf_counter()
    out = model(input_ids=ids, use_cache=True)
    _sync(device)
    t1 = time.perf_counter()
    past = out.past_key_values
    nxt = out.logits[:, -1:].argmax(-1)
    mask = torch.ones(ids.shape[0], ids.shape[1] + new_tokens, dtype=torch.long, device=device)
    for step in range(new_tokens):
        out = model(
            input_ids=nxt, past_key_values=past, use_cache=True, attention_mask=mask[:, : ids.shape[1] + step + 1]
        )
        past = out.past_key_values
        nxt = out.logits[:, -1:].argmax(-1)
    _sync(device)
    return t1 - t0, time.perf_counter() - t1


def measure_perf(model: torch.nn.Module, workload: PerfWorkload | None = None) -> PerfResult:
    """Prefill and decode throughput and the workload's peak memory for ``model`` (in eval mode, on its device)."""
    workload = workload or PerfWorkload()
    started = time.perf_counter()
    device = next(model.parameters()).device
    limit = getattr(model.config, "max_position_embeddings", None)
    if limit and workload.prompt_tokens + workload.new_tokens > int(limit):  # a tiny model: shorten the prompt
        workload = PerfWorkload(max(int(limit) - workload.new_tokens, 1), workload.new_tokens, workload.batch,
                                workload.repeats)  # fmt: skip
    ids = _input_ids(model, workload, device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        method = "cuda_max_allocated"
    else:
        method = "rss_hwm" if _reset_rss_peak() else "rss_lifetime_peak"
    _one_pass(model, ids, min(workload.new_tokens, 2))  # warm-up: lazy kernels, caches, allocator
    prefill, decode = [], []
    for _ in range(workload.repeats):
        p, d = _one_pass(model, ids, workload.new_tokens)
        prefill.append(p)
        decode.append(d)
    if device.type == "cuda":
        peak = int(torch.cuda.max_memory_allocated(device))
    elif method == "rss_hwm":
        peak = int(_status_kib("VmHWM") or 0) * 1024
    else:
        peak = int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024
    n_prompt = workload.batch * workload.prompt_tokens
    n_new = workload.batch * workload.new_tokens
    return PerfResult(
        prefill_tokens_per_s=n_prompt / max(min(prefill), 1e-9),
        decode_tokens_per_s=n_new / max(min(decode), 1e-9),
        peak_memory_bytes=peak,
        memory_method=method,
        seconds=time.perf_counter() - started,
        workload=workload.label,
    )
