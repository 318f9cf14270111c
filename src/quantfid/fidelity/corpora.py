"""Calibration corpora of the fidelity stage: a registry of corpus sources, the corpus's identity, its token ids.

``fidelity.corpus`` is one of

- a built-in name: ``code``, ``prose``, ``tasks`` (quantfid.data.corpus);
- the name of a corpus file ``conf/corpus/<name>.yaml`` (one mapping as below; the YAML half of the registry);
- a mapping ``{source: <source>, <its params>..., name: <label>}``, in YAML or as an override
  (``'fidelity.corpus={source: text, path: /data/notes.txt}'``). The sources (each registered below with its
  params; ``sources()`` lists them):

  ============ ================================ ==========================================================
  source       params                           documents
  ============ ================================ ==========================================================
  text         path                             the file, one document
  dir          path, glob (``**/*.txt``)        each matching file (sorted by path), one document each
  jsonl        path, field                      the string ``field`` of each JSON line
  dataset      path, field, config, split,      ``datasets``: a directory written by ``save_to_disk``, or
               (``train``)                      ``load_dataset(path, config, split=split)`` (hub or local)
  wikitext     path                             llama.cpp's ``perplexity -f`` convention, see below
  builtin      corpus                           a built-in corpus by name
  ============ ================================ ==========================================================

Documents are tokenized one at a time without special tokens and joined with EOS. ``wikitext`` follows llama.cpp's
``perplexity -f wiki.test.raw`` exactly: the whole file is one string (llama.cpp's ``-f`` reader drops one trailing
newline), tokenized in one call *with* the tokenizer's special tokens (``common_tokenize(ctx, text, true)``: a BOS
in front when the tokenizer adds one); the windows are then ``fidelity.context``-token chunks whose first token is
replaced by BOS (``fidelity.bos``) and whose second half is scored (``fidelity.scored_fraction=0.5``).

Identity: :func:`corpus_sha256` hashes the text the corpus can contribute under a token budget (the document stream
up to ``max_tokens * CHARS_PER_TOKEN_BOUND`` characters, the only text :func:`load_corpus` reads), without a
tokenizer. It is part of the reference cache's key and of each run's params and identity, so editing a file never
reuses a stale cache or skips a run as "already done". :func:`check_corpus` validates a corpus (readable, right
field, not empty, at least one window of tokens) before any run: one :class:`FidelityError` naming the field.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from transformers import PreTrainedTokenizerBase

from quantfid.api.paths import conf_dir
from quantfid.data.corpus import BUILTIN_CORPORA, CorpusError, documents
from quantfid.fidelity.errors import FidelityError

CHARS_PER_TOKEN_BOUND = 8  # generous: the organism BPE averages ~3 chars/token on code, subword BPEs ~4 on prose
_DOC_SEP = "\x1e"  # record separator between documents in the identity hash (not in the tokenized text)


@dataclass(frozen=True)
class CorpusSource:
    """One kind of corpus: its params (required ones without a default) and the documents it yields."""

    name: str
    required: tuple[str, ...]
    optional: Mapping[str, Any]
    documents: Callable[[dict[str, Any]], Iterator[str]]
    doc: str
    special_tokens: bool = False  # tokenize with the tokenizer's special tokens (llama.cpp's raw-file convention)


_SOURCES: dict[str, CorpusSource] = {}


def corpus_source(name: str, required: tuple[str, ...] = (), optional: Mapping[str, Any] | None = None,
                  doc: str = "", special_tokens: bool = False) -> Callable:  # fmt: skip
    """Decorator: register a documents function as the corpus source ``name``."""

    def wrap(fn: Callable[[dict[str, Any]], Iterator[str]]) -> Callable[[dict[str, Any]], Iterator[str]]:
        _SOURCES[name] = CorpusSource(name, required, dict(optional or {}), fn, doc, special_tokens)
        return fn

    return wrap


def sources() -> dict[str, CorpusSource]:
    return dict(_SOURCES)


def _existing(spec: Mapping[str, Any], kind: str) -> Path:
    path = Path(str(spec["path"])).expanduser()
    ok = path.is_file() if kind == "file" else path.is_dir() if kind == "dir" else path.exists()
    if not ok:
        raise FidelityError(
            f"fidelity.corpus.path={str(spec['path'])!r} (source {spec['source']!r}): no such {kind} "
            f"(resolved {path.resolve()}); give an existing {kind}"
        )
    return path


def _read(path: Path) -> str:
    return path.read_text(encoding="utf-8", errors="replace")


@corpus_source("builtin", required=("corpus",), doc="a built-in corpus: code, prose or tasks")
def _builtin(spec: dict[str, Any]) -> Iterator[str]:
    try:
        return documents(str(spec["corpus"]))
    except CorpusError as err:
        raise FidelityError(str(err)) from err


@corpus_source("text", required=("path",), doc="one text file, one document")
def _text(spec: dict[str, Any]) -> Iterator[str]:
    path = _existing(spec, "file")
    return iter([_read(path)])


@corpus_source("dir", required=("path",), optional={"glob": "**/*.txt"}, doc="every matching file of a directory")
def _dir(spec: dict[str, Any]) -> Iterator[str]:
    root = _existing(spec, "dir")
    files = sorted(p for p in root.glob(str(spec["glob"])) if p.is_file())
    if not files:
        raise FidelityError(
            f"fidelity.corpus.glob={spec['glob']!r}: no file in {root} matches; set fidelity.corpus.glob (e.g. '*.md')"
        )
    return (_read(p) for p in files)


@corpus_source("jsonl", required=("path", "field"), doc="the string field of each JSON line")
def _jsonl(spec: dict[str, Any]) -> Iterator[str]:
    path = _existing(spec, "file")
    field = str(spec["field"])

    def gen() -> Iterator[str]:
        with path.open(encoding="utf-8") as f:
            for i, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as err:
                    raise FidelityError(f"fidelity.corpus.path={str(path)!r}: line {i} is not JSON ({err})") from err
                if not isinstance(record, dict) or field not in record:
                    keys = sorted(record) if isinstance(record, dict) else type(record).__name__
                    raise FidelityError(
                        f"fidelity.corpus.field={field!r}: line {i} of {path} has no such field; its keys are {keys}"
                    )
                if not isinstance(record[field], str):
                    raise FidelityError(
                        f"fidelity.corpus.field={field!r}: line {i} of {path} holds a "
                        f"{type(record[field]).__name__}, not text"
                    )
                yield record[field]

    return gen()


@corpus_source(
    "dataset",
    required=("path", "field"),
    optional={"config": None, "split": "train"},
    doc="a datasets dataset: a save_to_disk directory, or load_dataset(path, config, split) (hub or local files)",
)
def _dataset(spec: dict[str, Any]) -> Iterator[str]:
    import datasets  # deferred: heavy, needed only for this source

    path, field, split = str(spec["path"]), str(spec["field"]), str(spec["split"])
    local = Path(path).expanduser()
    try:
        if (local / "dataset_info.json").is_file() or (local / "dataset_dict.json").is_file():
            ds = datasets.load_from_disk(str(local))
            if isinstance(ds, datasets.DatasetDict):
                if split not in ds:
                    raise FidelityError(
                        f"fidelity.corpus.split={split!r}: the dataset at {path} has splits {sorted(ds)}"
                    )
                ds = ds[split]
        else:
            ds = datasets.load_dataset(path, spec.get("config"), split=split)
    except FidelityError:
        raise
    except Exception as err:  # datasets raises many types (FileNotFoundError, DatasetNotFoundError, ValueError)
        raise FidelityError(
            f"fidelity.corpus.path={path!r} (source 'dataset', config {spec.get('config')!r}, split {split!r}) "
            f"could not be loaded: {type(err).__name__}: {err}"
        ) from err
    if field not in ds.column_names:
        raise FidelityError(f"fidelity.corpus.field={field!r}: the dataset {path} has columns {ds.column_names}")
    return (str(t) for t in ds[field] if t is not None)


@corpus_source("wikitext", required=("path",), doc="llama.cpp's perplexity -f convention", special_tokens=True)
def _wikitext(spec: dict[str, Any]) -> Iterator[str]:
    text = _read(_existing(spec, "file"))
    return iter([text[:-1] if text.endswith("\n") else text])  # llama.cpp's -f reader drops one trailing newline


def _named(name: str) -> dict[str, Any] | None:
    path = conf_dir() / "corpus" / f"{name}.yaml"
    if not path.is_file():
        return None
    data = yaml.safe_load(path.read_text()) or {}
    if not isinstance(data, dict):
        raise FidelityError(f"{path} must hold a mapping with 'source' and its params")
    return {"name": name, **data}


def named_corpora() -> list[str]:
    return sorted(p.stem for p in (conf_dir() / "corpus").glob("*.yaml"))


def corpus_spec(value: Any) -> dict[str, Any]:
    """The resolved corpus spec of a ``fidelity.corpus`` value: ``source``, every param (defaults filled), ``name``.

    Unknown sources, missing or unknown params are one :class:`FidelityError` naming the field."""
    if isinstance(value, str):
        if value in BUILTIN_CORPORA:
            return {"source": "builtin", "corpus": value, "name": value}
        named = _named(value)
        if named is None:
            raise FidelityError(
                f"fidelity.corpus={value!r} is not known; choose a built-in ({list(BUILTIN_CORPORA)}), a corpus file "
                f"of conf/corpus ({named_corpora()}), or a mapping {{source: ..., path: ...}} with source one of "
                f"{sorted(_SOURCES)}"
            )
        value = named
    if not isinstance(value, Mapping):
        raise FidelityError(f"fidelity.corpus={value!r} must be a corpus name or a mapping with 'source'")
    value = {str(k): v for k, v in value.items()}
    source = value.get("source")
    if source not in _SOURCES:
        raise FidelityError(
            f"fidelity.corpus.source={source!r} is not a corpus source; choose one of {sorted(_SOURCES)}"
        )
    src = _SOURCES[source]
    known = {"source", "name", *src.required, *src.optional}
    extra = sorted(set(value) - known)
    if extra:
        raise FidelityError(
            f"fidelity.corpus.{extra[0]} is not a param of corpus source {source!r}; its params are "
            f"{sorted(known - {'source'})}"
        )
    missing = [k for k in src.required if value.get(k) in (None, "")]
    if missing:
        raise FidelityError(f"fidelity.corpus.{missing[0]} is required by corpus source {source!r} ({src.doc})")
    spec = {"source": source, **{k: value[k] for k in src.required}}
    spec.update({k: value.get(k, default) for k, default in src.optional.items()})
    spec["name"] = str(value.get("name") or _default_label(spec))
    if not re.fullmatch(r"[A-Za-z0-9_\-]+", spec["name"]):
        raise FidelityError(
            f"fidelity.corpus.name={spec['name']!r}: a corpus label names fidelity variants (kld_mean@<name>.256); "
            "use letters, digits, '_' and '-' only"
        )
    return spec


def _default_label(spec: Mapping[str, Any]) -> str:
    if spec["source"] == "builtin":
        return str(spec["corpus"])
    stem = Path(str(spec.get("path", ""))).name.split(".")[0] or spec["source"]
    return re.sub(r"[^A-Za-z0-9_\-]+", "_", f"{spec['source']}-{stem}")


def corpus_label(value: Any) -> str:
    """The corpus's short name: what ``fidelity.corpus`` shows in params and variant names (``code``,
    ``text-notes``)."""
    return corpus_spec(value)["name"]


def corpus_documents(value: Any) -> Iterator[str]:
    spec = corpus_spec(value)
    return _SOURCES[spec["source"]].documents(spec)


def _text_stream(value: Any, max_chars: int | None) -> Iterator[str]:
    """The documents, each cut so that the total never exceeds ``max_chars``: the only text a budget reads."""
    left = max_chars
    for doc in corpus_documents(value):
        if left is not None:
            if left <= 0:
                return
            doc = doc[:left]
            left -= len(doc)
        yield doc


def max_chars_for(max_tokens: int | None) -> int | None:
    return None if max_tokens is None else max_tokens * CHARS_PER_TOKEN_BOUND


def corpus_sha256(value: Any, max_tokens: int | None = None) -> str:
    """Content hash of the text a corpus contributes under a budget of ``max_tokens`` tokens (tokenizer-free): the
    corpus's identity in the reference-cache key and in the run identity."""
    h = hashlib.sha256()
    spec = corpus_spec(value)
    h.update(json.dumps({"source": spec["source"], "special": _SOURCES[spec["source"]].special_tokens}).encode())
    for doc in _text_stream(value, max_chars_for(max_tokens)):
        h.update(_DOC_SEP.encode())
        h.update(doc.encode("utf-8", errors="replace"))
    return h.hexdigest()


def load_corpus(value: Any, tokenizer: PreTrainedTokenizerBase, max_tokens: int | None = None) -> np.ndarray:
    """Token ids (int64) of corpus ``value`` under ``tokenizer``, at most ``max_tokens`` of them.

    Documents are tokenised one at a time without special tokens (with them for a ``wikitext`` file, as llama.cpp)
    and joined with EOS (the separator the organism was trained with), stopping once the budget is filled: memory
    follows the budget, not the corpus. Windows and BOS handling are the cache's business.
    """
    sep = tokenizer.eos_token_id
    special = _SOURCES[corpus_spec(value)["source"]].special_tokens
    parts: list[np.ndarray] = []
    n = 0
    try:
        for i, doc in enumerate(_text_stream(value, max_chars_for(max_tokens))):
            if max_tokens is not None and n >= max_tokens:
                break
            ids = tokenizer(doc, add_special_tokens=special, verbose=False)["input_ids"]
            if i and sep is not None:
                ids = [sep, *ids]
            parts.append(np.asarray(ids, dtype=np.int64))
            n += len(ids)
    except CorpusError as err:
        raise FidelityError(str(err)) from err
    except (OSError, UnicodeError) as err:
        raise FidelityError(f"fidelity.corpus={corpus_label(value)!r} could not be read: {err}") from err
    out = np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)
    return out[:max_tokens] if max_tokens is not None else out


def check_corpus(
    value: Any,
    tokenizer: PreTrainedTokenizerBase | None = None,
    context: int | None = None,
    max_tokens: int | None = None,
) -> dict[str, Any]:
    """Validate a corpus before any run: the spec, the source readable and holding text and, given a tokenizer and
    a context, at least one window of tokens. Returns the resolved spec with its ``sha256``; raises one
    :class:`FidelityError` naming the field otherwise."""
    spec = corpus_spec(value)
    if not any(doc.strip() for doc in _text_stream(value, max_chars_for(max_tokens))):
        raise FidelityError(
            f"fidelity.corpus={spec['name']!r} (source {spec['source']!r}) is empty: it holds no text; check its "
            "path, field or split"
        )
    if tokenizer is not None and context is not None:
        n = load_corpus(value, tokenizer, max_tokens=max_tokens).size
        if n < context:
            raise FidelityError(
                f"fidelity.corpus={spec['name']!r} has {n} tokens, fewer than one window of fidelity.context="
                f"{context}; use a smaller context or a longer corpus"
            )
    return {**spec, "sha256": corpus_sha256(value, max_tokens)}
