"""The task registry: one declarative, versioned YAML per task, validated into a :class:`Task`.

A task file names its data (``source``), how a prompt is scored (``scoring``) and the generation limits
(``generation``); see docs/bench.md for the format. Task files live under ``conf/task/`` (a task's name is its path
there without ``.yaml``, e.g. ``organism/arith``) and in any directory listed in ``$QUANTFID_TASK_PATH``
(``os.pathsep``-separated, searched first). ``load_task`` also accepts a path to a YAML file. A file may start from
another with ``include: <path relative to it>`` (its keys override the included file's, mapping by mapping, as in
lm-evaluation-harness); files whose name starts with ``_`` are such shared bases, not tasks.
"""

from __future__ import annotations

import hashlib
import json
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from quantfid.api.paths import task_dirs
from quantfid.data import tasks as organism_tasks

TASK_FILE_SCHEMA = 1
SOURCE_TYPES = ("organism", "jsonl", "humaneval", "lm_eval")
SCORING_TYPES = ("exact", "execute", "choice", "lm_eval")
NORMALIZATIONS = ("none", "strip", "lower_strip", "collapse_whitespace")
LENGTH_NORMALIZATIONS = ("none", "tokens", "bytes")
HARNESSES = ("organism_function", "humaneval")
#: Tasks that are not organism families (JSONL, HumanEval, lm-eval) give their calibration prompts by a deterministic
#: split on the prompt hash: a prompt is a calibration prompt when ``u(prompt_hash) < source.calibration_fraction``,
#: with ``u`` uniform in [0, 1) from SHA-256 of the hash salted with :data:`CALIBRATION_SPLIT` (the split's version).
#: The evaluation side leaves those prompts out. ``calibration_fraction: 0`` keeps every prompt for evaluation (and
#: the task then has no calibration prompts).
CALIBRATION_SPLIT = "calibration-split-v1"
DEFAULT_CALIBRATION_FRACTION = 0.125


def in_calibration_split(prompt_hash: str, fraction: float) -> bool:
    """Is the prompt with this hash a calibration prompt of a split that gives ``fraction`` of prompts to it?"""
    digest = hashlib.sha256(f"{CALIBRATION_SPLIT}\x00{prompt_hash}".encode()).hexdigest()
    return int(digest[:13], 16) / 16**13 < fraction


class TaskConfigError(ValueError):
    """A task name or task file that cannot be used; the message names the file, the field and what to do."""


@dataclass(frozen=True)
class Generation:
    """Greedy generation limits: at most ``max_new_tokens``, cut at the first of ``stop``, ``batch_size`` prompts."""

    max_new_tokens: int = 32
    stop: tuple[str, ...] = ("\n",)
    batch_size: int = 64
    chat_template: bool = False  # wrap each prompt as one user turn with the tokenizer's chat template (instruct)


@dataclass(frozen=True)
class Sandbox:
    """Limits of the sandboxed run of one generated program (see quantfid.bench.sandbox)."""

    wall_seconds: float = 5.0
    cpu_seconds: int = 3
    memory_mb: int = 512
    workers: int = 0  # 0: one per CPU core, at most 8


@dataclass(frozen=True)
class Scoring:
    """How one prompt is scored.

    ``exact``: the generated text equals the expected answer after ``normalize``. ``execute``: the generated code is
    run with its tests in the sandbox (``harness`` says how the program is assembled). ``choice``: the choice with the
    highest log-likelihood (``length_normalization``: none, per token, per UTF-8 byte) must be the right one.
    ``lm_eval``: lm-evaluation-harness scores it; ``metric`` is the per-sample metric read as the score.
    """

    type: str
    normalize: str = "strip"
    harness: str = ""
    length_normalization: str = "none"
    metric: str = ""
    sandbox: Sandbox = field(default_factory=Sandbox)


@dataclass(frozen=True)
class Task:
    """A validated task file. ``spec_hash`` hashes its resolved content: it keys cached reference outcomes."""

    name: str
    version: int
    description: str
    source: dict[str, Any]
    scoring: Scoring
    generation: Generation
    path: Path

    @property
    def spec_hash(self) -> str:
        """Hash of the resolved task and of its local data file's content, so an edited file is a new task."""
        payload = {
            "name": self.name,
            "version": self.version,
            "source": self.source,
            "scoring": _asdict(self.scoring),
            "generation": _asdict(self.generation),
            "data_sha256": _file_sha256(self.source.get("path") or self.source.get("file")),
        }
        return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _file_sha256(path: str | None) -> str | None:
    if not path or not Path(path).is_file():
        return None
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _asdict(obj: Any) -> Any:
    if hasattr(obj, "__dataclass_fields__"):
        return {k: _asdict(getattr(obj, k)) for k in obj.__dataclass_fields__}
    return list(obj) if isinstance(obj, tuple) else obj


MAX_INCLUDE_DEPTH = 8


def list_tasks() -> list[str]:
    """Names of every task file found (sorted, first directory wins on a clash)."""
    names: set[str] = set()
    for root in task_dirs():
        if root.is_dir():
            files = (p for p in root.rglob("*.yaml") if not p.name.startswith("_"))
            names.update(p.relative_to(root).with_suffix("").as_posix() for p in files)
    return sorted(names)


def find_task_file(name: str) -> Path:
    if name.endswith((".yaml", ".yml")) and Path(name).is_file():
        return Path(name)
    for root in task_dirs():
        candidate = root / f"{name}.yaml"
        if candidate.is_file():
            return candidate
    known = list_tasks()
    raise TaskConfigError(
        f"unknown task {name!r}. Known tasks: {', '.join(known) or '(none)'}. Task files are looked up in "
        f"{[str(d) for d in task_dirs()]}; add a YAML there or list its directory in $QUANTFID_TASK_PATH."
    )


def load_task(name: str) -> Task:
    """The validated task called ``name`` (or the task file at that path)."""
    path = find_task_file(name)
    raw = read_task_file(path)
    return parse_task(raw, path, default_name=name if not name.endswith((".yaml", ".yml")) else path.stem)


def _merge(base: dict, override: dict) -> dict:
    out = dict(base)
    for key, value in override.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def read_task_file(path: Path, depth: int = 0) -> Any:
    """A task file's content with its ``include:`` chain resolved (the including file's keys win)."""
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise TaskConfigError(f"{path}: not valid YAML ({err})") from err
    if not isinstance(raw, dict) or "include" not in raw:
        return raw
    include = raw.pop("include")
    if not isinstance(include, str) or not include:
        raise TaskConfigError(f"{path}: field 'include': must be a path to a YAML file, got {include!r}")
    base_path = (path.parent / include).resolve()
    if not base_path.is_file():
        raise TaskConfigError(f"{path}: field 'include': no file at {base_path}")
    if depth >= MAX_INCLUDE_DEPTH:
        raise TaskConfigError(f"{path}: field 'include': more than {MAX_INCLUDE_DEPTH} nested includes (a loop?)")
    base = read_task_file(base_path, depth + 1)
    if not isinstance(base, dict):
        raise TaskConfigError(f"{base_path} (included by {path}): must be a mapping")
    return _merge(base, raw)


class _Fields:
    """Reads one mapping of a task file, field by field, with errors that name the file and the dotted field."""

    def __init__(self, raw: Any, path: Path, prefix: str) -> None:
        if not isinstance(raw, dict):
            where = f"field {prefix!r}" if prefix else "the file"
            raise TaskConfigError(f"{path}: {where} must be a mapping, got {type(raw).__name__} {raw!r}")
        self.raw, self.path, self.prefix, self.seen = raw, path, prefix, set()

    def field(self, key: str) -> str:
        return f"{self.prefix}.{key}" if self.prefix else key

    def fail(self, key: str, what: str) -> TaskConfigError:
        return TaskConfigError(f"{self.path}: field {self.field(key)!r}: {what}")

    def get(self, key: str, typ: type | tuple[type, ...], default: Any = ..., choices: tuple = ()) -> Any:
        self.seen.add(key)
        if key not in self.raw:
            if default is ...:
                raise self.fail(key, "is required but missing")
            return default
        value = self.raw[key]
        if typ is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if not isinstance(value, typ) or (isinstance(value, bool) and typ in (int, float)):
            names = typ.__name__ if isinstance(typ, type) else " or ".join(t.__name__ for t in typ)
            raise self.fail(key, f"must be {names}, got {type(value).__name__} {value!r}")
        if choices and value not in choices:
            raise self.fail(key, f"got {value!r}; expected one of {list(choices)}")
        return value

    def positive(self, key: str, typ: type, default: Any = ...) -> Any:
        value = self.get(key, typ, default)
        if value is not None and value <= 0:
            raise self.fail(key, f"must be > 0, got {value!r}")
        return value

    def done(self) -> None:
        unknown = sorted(set(self.raw) - self.seen)
        if unknown:
            raise self.fail(unknown[0], f"unknown field; known fields here: {sorted(self.seen)}")


def parse_task(raw: Any, path: Path, default_name: str = "") -> Task:
    """Validate a task file's content; every problem raises :class:`TaskConfigError` naming the field."""
    top = _Fields(raw, path, "")
    schema = top.get("schema", int, TASK_FILE_SCHEMA)
    if schema != TASK_FILE_SCHEMA:
        raise top.fail("schema", f"task-file format {schema} is not supported; this quantfid reads {TASK_FILE_SCHEMA}")
    name = top.get("name", str, default_name)
    version = top.positive("version", int)
    description = top.get("description", str, "")
    source = _parse_source(top.get("source", dict), path)
    scoring = _parse_scoring(top.get("scoring", dict), path)
    gen = _Fields(top.get("generation", dict, {}), path, "generation")
    stop = gen.get("stop", list, ["\n"])
    if not all(isinstance(s, str) and s for s in stop):
        raise gen.fail("stop", f"must be a list of non-empty strings, got {stop!r}")
    generation = Generation(
        max_new_tokens=gen.positive("max_new_tokens", int, 32),
        stop=tuple(stop),
        batch_size=gen.positive("batch_size", int, 64),
        chat_template=gen.get("chat_template", bool, False),
    )
    gen.done()
    top.done()
    _check_combination(source, scoring, path)
    return Task(name, version, description, source, scoring, generation, path)


def _parse_source(raw: dict, path: Path) -> dict[str, Any]:
    src = _Fields(raw, path, "source")
    kind = src.get("type", str, choices=SOURCE_TYPES)
    out: dict[str, Any] = {"type": kind}
    if kind == "organism":  # n, seed and the generators' version default to the organism's own (quantfid.data.tasks)
        out["family"] = src.get("family", str, choices=tuple(organism_tasks.FAMILIES))
        out["n"] = src.positive("n", int, organism_tasks.EVAL_PER_FAMILY)
        out["seed"] = src.get("seed", int, organism_tasks.EVAL_SEED)
        out["tasks_version"] = str(src.get("tasks_version", (str, int), organism_tasks.TASKS_VERSION))
        split = src.get("split", str, "eval", choices=("eval", "truth"))
        if split != "eval":  # the ground-truth draw (quantfid.data.tasks.truth_set); absent = evaluation set
            out["split"] = split
        if out["tasks_version"] != organism_tasks.TASKS_VERSION:
            raise src.fail(
                "tasks_version",
                f"is {out['tasks_version']!r} but the organism's generators are at TASKS_VERSION "
                f"{organism_tasks.TASKS_VERSION!r}: the held-out sets changed; update the file and bump its version",
            )
    elif kind == "jsonl":
        file = src.get("path", str)
        resolved = Path(file) if Path(file).is_absolute() else (path.parent / file)
        out["path"] = str(resolved)
        out["template"] = src.get("template", str, "{prompt}")
        fields = _Fields(src.get("fields", dict, {}), path, "source.fields")
        out["fields"] = {
            k: fields.get(k, str, k) for k in ("id", "prompt", "answer", "choices", "answer_index", "tests")
        }
        fields.done()
    elif kind == "humaneval":
        out["file"] = src.get("file", (str, type(None)), None)
    else:  # lm_eval
        out["task"] = src.get("task", str)
        include = src.get("include_path", (str, type(None)), None)
        if include is not None and not Path(include).is_absolute():
            include = str(path.parent / include)
        out["include_path"] = include
        out["num_fewshot"] = src.get("num_fewshot", (int, type(None)), None)
    if kind != "organism":  # the organism draws its calibration prompts separately (quantfid.data.tasks)
        fraction = src.get("calibration_fraction", float, DEFAULT_CALIBRATION_FRACTION)
        if not 0.0 <= fraction < 1.0:
            raise src.fail("calibration_fraction", f"must be in [0, 1) (0: no calibration prompts), got {fraction!r}")
        out["calibration_fraction"] = fraction
        out["calibration_split"] = CALIBRATION_SPLIT
    src.done()
    return out


def _parse_scoring(raw: dict, path: Path) -> Scoring:
    sc = _Fields(raw, path, "scoring")
    kind = sc.get("type", str, choices=SCORING_TYPES)
    normalize = sc.get("normalize", str, "strip", choices=NORMALIZATIONS)
    harness = sc.get("harness", str, "", choices=("", *HARNESSES))
    if kind == "execute" and not harness:
        raise sc.fail("harness", f"is required for scoring.type 'execute'; one of {list(HARNESSES)}")
    length_norm = sc.get("length_normalization", str, "none", choices=LENGTH_NORMALIZATIONS)
    metric = sc.get("metric", str, "")
    sandbox = Sandbox()
    if "sandbox" in raw:
        sb = _Fields(sc.get("sandbox", dict), path, "scoring.sandbox")
        sandbox = Sandbox(
            wall_seconds=sb.positive("wall_seconds", float, 5.0),
            cpu_seconds=sb.positive("cpu_seconds", int, 3),
            memory_mb=sb.positive("memory_mb", int, 512),
            workers=sb.get("workers", int, 0),
        )
        sb.done()
    sc.done()
    return Scoring(kind, normalize, harness, length_norm, metric, sandbox)


def _check_combination(source: dict, scoring: Scoring, path: Path) -> None:
    if (source["type"] == "lm_eval") != (scoring.type == "lm_eval"):
        raise TaskConfigError(
            f"{path}: field 'scoring.type': {scoring.type!r} does not go with source.type {source['type']!r}; "
            "lm-evaluation-harness tasks use source.type 'lm_eval' with scoring.type 'lm_eval' (and only they do)"
        )
    if source["type"] == "organism":
        native = organism_tasks.FAMILIES[source["family"]](random.Random(0)).scoring
        wanted = {"exact": "exact", "execute": "execute", "choice": "choice"}[native]
        if scoring.type != wanted:
            raise TaskConfigError(
                f"{path}: field 'scoring.type': organism family {source['family']!r} is scored by {wanted!r}, "
                f"got {scoring.type!r}"
            )
