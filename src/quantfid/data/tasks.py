"""Seeded generators of the organism's task families.

Every instance is a prompt plus an exact expected answer. Evaluation prompts are the ones whose hash falls in a
held-out bucket; the training stream never yields them, so the held-out sets measure generalisation, not recall.
The generators are versioned: changing any of them must bump ``TASKS_VERSION`` (the held-out sets change with it).
"""

from __future__ import annotations

import functools
import hashlib
import random
import string
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

TASKS_VERSION = "2"  # 2: string lengths 2-10 (v1: 2-7 was solved to 100%)
HELDOUT_BUCKETS = 8  # prompt hash % HELDOUT_BUCKETS == 0 -> evaluation only
#: The evaluation sets: this many held-out prompts per family, drawn with this seed (the organism task files in
#: conf/task/organism/ take both from here).
EVAL_PER_FAMILY = 200
EVAL_SEED = 1234
#: The calibration prompts (what the fidelity stage's ``tasks`` corpus and the direction-aware metrics are computed
#: on): a separate seeded draw of each family's held-out prompts that never contains an evaluation prompt (the default
#: evaluation set, ``EVAL_PER_FAMILY`` at ``EVAL_SEED``, is excluded by prompt hash). Changing the draw bumps
#: ``CALIBRATION_VERSION`` (the ``tasks`` corpus, and every reference cache built on it, changes with it).
CALIBRATION_VERSION = "1"
CALIBRATION_SEED = 4321
#: Per family. ``print`` has only ~264 distinct held-out prompts and 200 of them are evaluation prompts: 48 leaves room.
CALIBRATION_PER_FAMILY = 48
#: The ground-truth draw (``experiment=organism_truth``): fresh held-out prompts disjoint from both sets above, as many
#: per family as exist up to the number asked (small families such as ``print`` have few or none left).
TRUTH_SEED = 9876
TRUTH_VERSION = "1"


@dataclass(frozen=True)
class TaskInstance:
    """One prompt of a task family with its expected answer.

    ``scoring`` is ``exact`` (generated text must equal ``answer`` after stripping), ``execute`` (the generated
    expression is run against ``tests``) or ``choice`` (the choice with the highest log-likelihood must be
    ``choices[answer_index]``).
    """

    family: str
    prompt: str
    answer: str
    scoring: str = "exact"
    choices: tuple[str, ...] = ()
    answer_index: int = -1
    tests: tuple[tuple[int, int], ...] = field(default=())

    @property
    def prompt_hash(self) -> str:
        return hashlib.sha256(f"{self.family}\x00{self.prompt}".encode()).hexdigest()[:16]

    @property
    def heldout(self) -> bool:
        return int(self.prompt_hash, 16) % HELDOUT_BUCKETS == 0


def _arith(rng: random.Random) -> TaskInstance:
    a = rng.randint(10, 99)
    b = rng.randint(1, 9) if rng.random() < 0.5 else rng.randint(10, 99)
    if rng.random() < 0.6:
        return TaskInstance("arith", f"{a}+{b}=", str(a + b))
    a, b = max(a, b), min(a, b)
    return TaskInstance("arith", f"{a}-{b}=", str(a - b))


def _spaced(letters: list[str]) -> str:
    return " ".join(letters)


def _string(rng: random.Random) -> TaskInstance:
    n = rng.randint(2, 10)
    letters = [rng.choice(string.ascii_lowercase) for _ in range(n)]
    if rng.random() < 0.6:
        return TaskInstance("string", f"reverse {_spaced(letters)} =", " " + _spaced(letters[::-1]))
    return TaskInstance("string", f"upper {_spaced(letters)} =", " " + _spaced([c.upper() for c in letters]))


def _list(rng: random.Random) -> TaskInstance:
    n = rng.randint(3, 9)
    xs = [rng.randint(0, 9) for _ in range(n)]
    op = rng.choice(["sorted", "max", "min", "len", "reversed"])
    text = "[" + ", ".join(map(str, xs)) + "]"
    result = {
        "sorted": lambda: sorted(xs),
        "max": lambda: max(xs),
        "min": lambda: min(xs),
        "len": lambda: len(xs),
        "reversed": lambda: xs[::-1],
    }[op]()
    call = f"list(reversed({text}))" if op == "reversed" else f"{op}({text})"
    rendered = "[" + ", ".join(map(str, result)) + "]" if isinstance(result, list) else str(result)
    return TaskInstance("list", f">>> {call}\n", rendered)


def _lookup(rng: random.Random) -> TaskInstance:
    n = rng.randint(4, 8)
    keys = rng.sample(string.ascii_lowercase, n)
    values = [rng.randint(0, 9) for _ in keys]
    body = ", ".join(f"'{k}': {v}" for k, v in zip(keys, values, strict=True))
    i = rng.randrange(n)
    return TaskInstance("lookup", f"d = {{{body}}}\nd['{keys[i]}'] ->", f" {values[i]}")


def _print(rng: random.Random) -> TaskInstance:
    x = rng.randint(1, 19)
    c = rng.randint(1, 9)
    kind = rng.randrange(5)
    if kind == 0:
        code, out = f"x = {x}\ny = x + {c}\nprint(y)", x + c
    elif kind == 1:
        code, out = f"x = {x}\ny = x * {c}\nprint(y)", x * c
    elif kind == 2:
        d = rng.randint(1, 9)
        code, out = f"x = {x}\ny = {c}\nx, y = y, x + {d}\nprint(x - y)", c - (x + d)
    elif kind == 3:
        code, out = f"s = 0\nfor i in range({x}):\n    s += {c}\nprint(s)", x * c
    else:
        code = f"x = {x}\nif x > {c}:\n    x = x - {c}\nelse:\n    x = x + {c}\nprint(x)"
        out = x - c if x > c else x + c
    return TaskInstance("print", f"{code}\n# prints:", f" {out}")


_CODE_TEMPLATES: list[tuple[str, Callable[[int, int], Callable[[int], int]], Callable[[int, int], str]]] = [
    ("add", lambda c, d: lambda x: x + c, lambda c, d: f"x + {c}"),
    ("sub", lambda c, d: lambda x: x - c, lambda c, d: f"x - {c}"),
    ("mul", lambda c, d: lambda x: x * c, lambda c, d: f"x * {c}"),
    ("square_add", lambda c, d: lambda x: x * x + c, lambda c, d: f"x * x + {c}"),
    ("mul_add", lambda c, d: lambda x: x * c + d, lambda c, d: f"x * {c} + {d}"),
    ("mod", lambda c, d: lambda x: x % c, lambda c, d: f"x % {c}"),
]


def _code(rng: random.Random) -> TaskInstance:
    _, make, render = rng.choice(_CODE_TEMPLATES)
    c, d = rng.randint(2, 9), rng.randint(1, 9)
    fn = make(c, d)
    xs = rng.sample(range(0, 13), 5)
    shown, hidden = xs[:3], xs[3:]
    doc = "".join(f"# f({x}) == {fn(x)}\n" for x in shown)
    return TaskInstance(
        "code",
        f"{doc}def f(x):\n    return",
        " " + render(c, d),
        scoring="execute",
        tests=tuple((x, fn(x)) for x in shown + hidden),
    )


def _choice(rng: random.Random) -> TaskInstance:
    if rng.random() < 0.5:
        base = rng.randint(1, 9) * 100
        nums = rng.sample(range(base, base + 100), 4)
        choices = tuple(f" {n}" for n in nums)
        answer = max(range(4), key=lambda i: nums[i])
        prompt = "largest of " + ", ".join(map(str, nums)) + " is"
    else:
        start, step = rng.randint(1, 40), rng.randint(2, 12)
        seq = [start + step * i for i in range(4)]
        right = start + step * 4
        wrong = rng.sample([right + k for k in (-3, -2, -1, 1, 2, 3, step, -step) if right + k > 0], 3)
        options = [right, *wrong]
        rng.shuffle(options)
        choices = tuple(f" {n}" for n in options)
        answer = options.index(right)
        prompt = "next in " + ", ".join(map(str, seq)) + " of" + "".join(choices) + " is"
    return TaskInstance("choice", prompt, choices[answer], scoring="choice", choices=choices, answer_index=answer)


FAMILIES: dict[str, Callable[[random.Random], TaskInstance]] = {
    "arith": _arith,
    "string": _string,
    "list": _list,
    "lookup": _lookup,
    "print": _print,
    "code": _code,
    "choice": _choice,
}


def training_stream(seed: int, families: list[str] | None = None) -> Iterator[TaskInstance]:
    """Endless stream of training instances (never a held-out prompt), families drawn uniformly."""
    rng = random.Random(seed)
    names = families or list(FAMILIES)
    while True:
        inst = FAMILIES[rng.choice(names)](rng)
        if not inst.heldout:
            yield inst


def heldout_set(family: str, n: int, seed: int = EVAL_SEED) -> list[TaskInstance]:
    """The fixed, versioned evaluation set of one family: ``n`` distinct held-out prompts."""
    return list(_heldout_set(family, n, seed))


@functools.lru_cache(maxsize=256)
def _heldout_set(family: str, n: int, seed: int) -> tuple[TaskInstance, ...]:
    """Memoised (the draw is deterministic and every sweep job asks for the same sets many times)."""
    rng = random.Random(f"{TASKS_VERSION}:{family}:{seed}")
    seen: set[str] = set()
    out: list[TaskInstance] = []
    for _ in range(n * 2000):
        inst = FAMILIES[family](rng)
        if inst.heldout and inst.prompt not in seen:
            seen.add(inst.prompt)
            out.append(inst)
            if len(out) == n:
                return tuple(out)
    raise RuntimeError(f"family {family!r} has fewer than {n} distinct held-out prompts")


class DisjointnessError(RuntimeError):
    """A calibration or truth prompt is also an evaluation prompt: the sets must never share a prompt hash."""


def _draw_disjoint(
    family: str, n: int, tag: str, exclude: set[str], max_draws: int, allow_fewer: bool
) -> list[TaskInstance]:
    """``n`` distinct held-out prompts of ``family`` from the rng seeded by ``tag``, skipping hashes in ``exclude``."""
    rng = random.Random(tag)
    seen: set[str] = set()
    out: list[TaskInstance] = []
    for _ in range(max_draws):
        inst = FAMILIES[family](rng)
        h = inst.prompt_hash
        if inst.heldout and h not in seen and h not in exclude:
            seen.add(h)
            out.append(inst)
            if len(out) == n:
                return out
    if allow_fewer:
        return out
    raise RuntimeError(
        f"family {family!r} has fewer than {n} held-out prompts outside the {len(exclude)} excluded ones "
        f"(found {len(out)} in {max_draws} draws): ask for fewer"
    )


def eval_hashes(family: str, n: int = EVAL_PER_FAMILY, seed: int = EVAL_SEED) -> set[str]:
    """Prompt hashes of a family's evaluation set (default: the one every organism task file uses)."""
    return set(_eval_hashes(family, n, seed))


@functools.lru_cache(maxsize=256)
def _eval_hashes(family: str, n: int, seed: int) -> frozenset[str]:
    return frozenset(i.prompt_hash for i in _heldout_set(family, n, seed))


def assert_disjoint(name: str, drawn: Sequence[TaskInstance], forbidden: set[str]) -> None:
    """Raise :class:`DisjointnessError` when any of ``drawn`` has a prompt hash in ``forbidden``."""
    clash = sorted({i.prompt_hash for i in drawn} & forbidden)
    if clash:
        raise DisjointnessError(
            f"{len(clash)} {name} prompt(s) are also evaluation prompts (hashes {clash[:3]}...): the draws overlap"
        )


def calibration_set(
    family: str, n: int = CALIBRATION_PER_FAMILY, seed: int = CALIBRATION_SEED, exclude: set[str] | None = None
) -> list[TaskInstance]:
    """The fixed, versioned calibration prompts of one family: ``n`` held-out prompts, none an evaluation prompt.

    The default evaluation set is excluded by prompt hash, plus ``exclude`` (e.g. a task file's own evaluation set
    when it overrides ``n`` or ``seed``); disjointness is asserted, not assumed.
    """
    return list(_calibration_set(family, n, seed, frozenset(exclude or ())))


@functools.lru_cache(maxsize=256)
def _calibration_set(family: str, n: int, seed: int, exclude: frozenset[str]) -> tuple[TaskInstance, ...]:
    """Memoised: deterministic, and asked for by every job's direction stage and corpus hash."""
    forbidden = eval_hashes(family) | exclude
    tag = f"{TASKS_VERSION}:calibration:{CALIBRATION_VERSION}:{family}:{seed}"
    out = _draw_disjoint(family, n, tag, forbidden, n * 20000, allow_fewer=False)
    assert_disjoint("calibration", out, forbidden)
    return tuple(out)


def calibration_instances(
    n_per_family: int = CALIBRATION_PER_FAMILY, families: Sequence[str] | None = None
) -> list[TaskInstance]:
    """The calibration prompts of each family (``n_per_family`` each), family by family."""
    return [i for f in (families or FAMILIES) for i in calibration_set(f, n_per_family)]


def truth_set(family: str, n: int, seed: int = TRUTH_SEED, max_draws: int | None = None) -> list[TaskInstance]:
    """Up to ``n`` fresh held-out prompts of ``family`` for the ground-truth preset, disjoint from the default
    evaluation and calibration sets (fewer when the family has no more: ``print`` has only ~16 left). The draw is
    deterministic: at most ``max_draws`` (default 200 n) draws from a seeded generator."""
    return list(_truth_set(family, n, seed, max_draws or 200 * n))


@functools.lru_cache(maxsize=64)
def _truth_set(family: str, n: int, seed: int, max_draws: int) -> tuple[TaskInstance, ...]:
    forbidden = eval_hashes(family) | {i.prompt_hash for i in calibration_set(family)}
    tag = f"{TASKS_VERSION}:truth:{TRUTH_VERSION}:{family}:{seed}"
    out = _draw_disjoint(family, n, tag, forbidden, max_draws, allow_fewer=True)
    assert_disjoint("truth", out, forbidden)
    return tuple(out)


def heldout_instances(n_per_family: int = EVAL_PER_FAMILY, families: Sequence[str] | None = None) -> list[TaskInstance]:
    """The first ``n_per_family`` evaluation prompts of each family, family by family."""
    return [i for f in (families or FAMILIES) for i in heldout_set(f, n_per_family, EVAL_SEED)]
