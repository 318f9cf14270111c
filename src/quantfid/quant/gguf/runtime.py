"""Two ways to run a GGUF quant, one switch (``runtime``):

- ``llama_cpp``: llama.cpp's own CPU kernels through llama-cpp-python (they quantize the activations in their dot
  products, as every llama.cpp user runs the file). :class:`LlamaCppModel` looks like a causal LM to the fidelity
  and bench stages: ``model(input_ids=..., attention_mask=...).logits`` and greedy ``model.generate(...)``, fed the
  *reference tokenizer's* token ids (llama.cpp never tokenizes, so tokenization cannot differ). Before it loads a
  file in the sweep's process, a child process evaluates the probe tokens with it: a build that crashes on this CPU
  is a clear refusal, never a dead sweep.
- ``transformers``: the file's weights dequantized into a torch model (``from_pretrained(dir, gguf_file=...)``):
  weight rounding only. The gap between the two is the kernels' contribution.
"""

from __future__ import annotations

import atexit
import functools
import weakref
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn
from transformers import PretrainedConfig
from transformers.modeling_outputs import CausalLMOutputWithPast

from quantfid.models.loading import ModelSpec, torch_dtype
from quantfid.quant.base import QuantUnavailableError
from quantfid.quant.gguf.quantize import require_llama_cpp, run_child

RUNTIMES = ("llama_cpp", "transformers")
_OPEN: weakref.WeakSet[LlamaCppModel] = weakref.WeakSet()


@atexit.register
def _close_all() -> None:
    """Free llama.cpp models before interpreter shutdown (llama-cpp-python's own finalizer fails once the module's
    globals are gone and prints a traceback)."""
    for model in list(_OPEN):
        model.close()


@functools.lru_cache(maxsize=64)
def probe_runtime(path: str, n_ctx: int, ids: tuple[int, ...]) -> dict:
    """Evaluate ``ids`` with llama.cpp on ``path`` in a child process (once per file and process)."""
    return run_child(
        "probe", {"path": path, "n_ctx": n_ctx, "ids": list(ids)}, f"runtime=llama_cpp on {Path(path).name}"
    )


class KvState:
    """Stands for llama.cpp's KV cache after a single-row forward: valid while nothing else ran on the model."""

    def __init__(self, model: LlamaCppModel, n_tokens: int) -> None:
        self.model, self.n_tokens = model, n_tokens

    def live(self, model: LlamaCppModel) -> bool:
        return self.model is model and model._llm is not None and model._llm.n_tokens == self.n_tokens


class LlamaCppModel(nn.Module):
    """A GGUF file run by llama.cpp's CPU kernels, behind the causal-LM surface quantfid's stages call.

    One sequence at a time (a padded batch is split into its rows; padding positions get zero logits, which no
    stage reads). Logits are float32 as llama.cpp returns them.
    """

    def __init__(self, path: Path, config: PretrainedConfig, n_threads: int | None = None) -> None:
        super().__init__()
        require_llama_cpp("runtime=llama_cpp")
        from llama_cpp import Llama  # deferred: optional native dependency

        self.config = config
        self.path = Path(path)
        self._anchor = nn.Parameter(torch.zeros(0), requires_grad=False)  # device/dtype for callers that ask
        n_ctx = int(getattr(config, "max_position_embeddings", 0) or 2048)
        self.n_ctx = n_ctx
        self._llm = Llama(
            model_path=str(path),
            n_ctx=n_ctx,
            n_batch=n_ctx,
            n_ubatch=n_ctx,
            n_threads=n_threads or torch.get_num_threads(),
            logits_all=True,
            verbose=False,
        )
        self.n_vocab = int(self._llm.n_vocab())
        _OPEN.add(self)

    def close(self) -> None:
        """Free the llama.cpp model and context now."""
        llm, self._llm = getattr(self, "_llm", None), None
        if llm is not None:
            llm.close()

    @property
    def device(self) -> torch.device:
        return torch.device("cpu")

    def sequence_logits(self, ids: Sequence[int]) -> np.ndarray:
        """Logits (len(ids) x vocab, float32) of one sequence from an empty KV cache."""
        if len(ids) > self.n_ctx:
            raise ValueError(f"{len(ids)} tokens exceed the llama.cpp context of {self.n_ctx}")
        self._llm.reset()
        self._llm.eval([int(i) for i in ids])
        return np.array(self._llm.scores[: len(ids)], dtype=np.float32)

    @staticmethod
    def _rows(input_ids: torch.Tensor, attention_mask: torch.Tensor | None) -> list[torch.Tensor]:
        mask = torch.ones_like(input_ids, dtype=torch.bool) if attention_mask is None else attention_mask.bool()
        return [mask[r] for r in range(input_ids.shape[0])]

    @torch.no_grad()
    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        past_key_values: object = None,
        use_cache: bool = False,
        **_: object,
    ) -> CausalLMOutputWithPast:
        """Logits of every row. With ``use_cache`` on a single unpadded row the returned ``past_key_values`` stands
        for llama.cpp's own KV cache: passing it back evaluates only the new tokens (the perf stage's decode loop)."""
        ids = input_ids.cpu()
        if isinstance(past_key_values, KvState) and past_key_values.live(self) and ids.shape[0] == 1:
            n0 = self._llm.n_tokens
            self._llm.eval(ids[0].tolist())
            logits = torch.from_numpy(np.array(self._llm.scores[n0 : self._llm.n_tokens], dtype=np.float32))
            return CausalLMOutputWithPast(logits=logits[None], past_key_values=KvState(self, self._llm.n_tokens))
        out = torch.zeros((*ids.shape, self.n_vocab), dtype=torch.float32)
        for r, keep in enumerate(self._rows(ids, attention_mask)):
            pos = keep.nonzero().squeeze(-1)
            if pos.numel():
                out[r, pos] = torch.from_numpy(self.sequence_logits(ids[r, pos].tolist()))
        past = KvState(self, self._llm.n_tokens) if use_cache and ids.shape[0] == 1 else None
        return CausalLMOutputWithPast(logits=out, past_key_values=past)

    @torch.no_grad()
    def generate(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        max_new_tokens: int = 20,
        do_sample: bool = False,
        pad_token_id: int | None = None,
        eos_token_id: int | None = None,
        stopping_criteria=None,
        **_: object,
    ) -> torch.Tensor:
        """Greedy completion of every row (llama.cpp's KV cache, one row at a time), as transformers' ``generate``
        returns it: the input (padding kept) followed by the new tokens, rows padded with ``pad_token_id``."""
        if do_sample:
            raise ValueError("runtime=llama_cpp generates greedily only (do_sample=False)")
        ids = input_ids.cpu()
        pad = pad_token_id if pad_token_id is not None else (eos_token_id or 0)
        new_rows: list[list[int]] = []
        for r, keep in enumerate(self._rows(ids, attention_mask)):
            seq = ids[r, keep].tolist()
            self._llm.reset()
            self._llm.eval(seq)
            new: list[int] = []
            while len(new) < max_new_tokens:
                tok = int(np.argmax(self._llm.scores[self._llm.n_tokens - 1]))
                new.append(tok)
                if tok == eos_token_id:
                    break
                if stopping_criteria is not None:
                    row = torch.cat([ids[r], torch.tensor(new, dtype=ids.dtype)])[None]
                    if bool(torch.as_tensor(stopping_criteria(row, None)).all()):
                        break
                if len(seq) + len(new) >= self.n_ctx:
                    break
                self._llm.eval([tok])
            new_rows.append(new)
        width = max((len(n) for n in new_rows), default=0)
        gen = torch.full((ids.shape[0], width), pad, dtype=ids.dtype)
        for r, new in enumerate(new_rows):
            gen[r, : len(new)] = torch.tensor(new, dtype=ids.dtype)
        return torch.cat([ids, gen], dim=1)


def load_llama_cpp(path: Path, config: PretrainedConfig, probe_ids: Sequence[int]) -> LlamaCppModel:
    """Probe ``path`` in a child process (a crash there is a refusal), then load it here."""
    require_llama_cpp("runtime=llama_cpp")
    n_ctx = int(getattr(config, "max_position_embeddings", 0) or 2048)
    probe_runtime(str(path), n_ctx, tuple(int(i) for i in probe_ids))
    return LlamaCppModel(path, config)


def load_transformers(path: Path, spec: ModelSpec) -> nn.Module:
    """The GGUF file dequantized into a transformers model (weights rounded as stored, float compute)."""
    from transformers import AutoModelForCausalLM

    try:
        model = AutoModelForCausalLM.from_pretrained(
            str(path.parent), gguf_file=path.name, dtype=torch_dtype(spec.dtype)
        )
    except (ValueError, RuntimeError, KeyError, NotImplementedError) as err:
        raise QuantUnavailableError(
            f"runtime=transformers could not load {path.name}: {type(err).__name__}: {err}"
        ) from err
    return model.to(spec.device).eval()
