"""Task generators: prompts whose right answer is known, so the model's output can be checked.

A task is a name, a family (the unit of leave-one-family-out evaluation) and a
function ``generate(rng) -> Example``. Built-in families: arithmetic (three
difficulties), copy, reverse, counting, sequence (next item), facts (from the table
shipped in ``data/facts.json``). Users add their own with ``register_task``::

    from lmlens_failure import Example, register_task

    register_task("plural", lambda rng: Example(prompt="...", answer="mice"), family="words")

An ``Example`` with ``answer=None`` is an *open* prompt: nothing to check, and only a
degenerate generation (empty output, a repetition loop) counts as a failure.
"""

from __future__ import annotations

import json
import random
import string
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from importlib import resources

from lmlens.errors import InvalidParamsError


@dataclass(frozen=True)
class Example:
    prompt: str
    answer: str | None  # None: an open prompt (labelled by degeneracy only)
    task: str = ""
    family: str = ""
    check: Callable[[str, str], bool] | None = field(default=None, compare=False, repr=False)


@dataclass(frozen=True)
class Task:
    name: str
    family: str
    generate: Callable[[random.Random], Example]
    check: Callable[[str, str], bool] | None = None  # (first output line, answer) -> right?


_TASKS: dict[str, Task] = {}


def register_task(
    name: str,
    generate: Callable[[random.Random], Example],
    *,
    family: str | None = None,
    check: Callable[[str, str], bool] | None = None,
    replace: bool = False,
) -> Task:
    """Add a task: ``generate(rng)`` returns an ``Example`` (prompt, answer or None)."""
    if not isinstance(name, str) or not name:
        raise InvalidParamsError("a task needs a non-empty name", field="tasks")
    if name in _TASKS and not replace:
        raise InvalidParamsError(f"task {name!r} is already registered (pass replace=True)", field="tasks")
    task = Task(name=name, family=family or name, generate=generate, check=check)
    _TASKS[name] = task
    return task


def unregister_task(name: str) -> None:
    _TASKS.pop(name, None)


def tasks() -> dict[str, Task]:
    return dict(_TASKS)


def resolve_tasks(names: Sequence[str] | None) -> list[Task]:
    """Task names or family names; None means every registered task."""
    if names is None:
        return list(_TASKS.values())
    if isinstance(names, str):
        names = [names]
    chosen: dict[str, Task] = {}
    for name in names:
        matched = [t for t in _TASKS.values() if name in (t.name, t.family)]
        if not matched:
            known = sorted({t.name for t in _TASKS.values()} | {t.family for t in _TASKS.values()})
            raise InvalidParamsError(f"unknown task {name!r}; known: {', '.join(known)}", field="tasks")
        for task in matched:
            chosen[task.name] = task
    return list(chosen.values())


def make_examples(n: int, task_names: Sequence[str] | None = None, *, seed: int = 0) -> list[Example]:
    """``n`` examples, spread evenly over the chosen tasks (round robin), reproducible by seed."""
    if not isinstance(n, int) or n < 1:
        raise InvalidParamsError("n must be a positive integer", field="n")
    chosen = resolve_tasks(task_names)
    rng = random.Random(seed)
    out: list[Example] = []
    seen: set[str] = set()
    attempts = 0
    while len(out) < n:
        task = chosen[len(out) % len(chosen)]
        example = task.generate(rng)
        attempts += 1
        if example.prompt in seen and attempts < 20 * n:
            continue  # avoid duplicates (they would leak across folds) while the task can offer new ones
        seen.add(example.prompt)
        out.append(
            Example(
                prompt=example.prompt,
                answer=example.answer,
                task=task.name,
                family=task.family,
                check=example.check or task.check,
            )
        )
    return out


# --- built-in tasks -------------------------------------------------------------------------


def _few_shot(lines: list[str], query: str) -> str:
    return "\n".join([*lines, query])


def _arithmetic(level: int) -> Callable[[random.Random], Example]:
    def pair(rng: random.Random) -> tuple[str, int]:
        if level == 1:
            a, b = rng.randint(0, 9), rng.randint(0, 9)
            return f"{a} + {b}", a + b
        if level == 2:
            a, b = rng.randint(10, 99), rng.randint(10, 99)
            if rng.random() < 0.5:
                return f"{a} + {b}", a + b
            a, b = max(a, b), min(a, b)
            return f"{a} - {b}", a - b
        a, b = rng.randint(11, 99), rng.randint(3, 19)
        if rng.random() < 0.5:
            return f"{a} * {b}", a * b
        a, b = rng.randint(100, 999), rng.randint(100, 999)
        return f"{a} + {b}", a + b

    def generate(rng: random.Random) -> Example:
        shots = [pair(rng) for _ in range(2)]
        question, answer = pair(rng)
        lines = [f"{q} = {a}" for q, a in shots]
        return Example(prompt=_few_shot(lines, f"{question} ="), answer=str(answer))

    return generate


_WORDS = [
    "cat",
    "dog",
    "sun",
    "tree",
    "book",
    "lamp",
    "fish",
    "bird",
    "milk",
    "rain",
    "door",
    "cake",
    "ship",
    "road",
    "star",
    "moon",
    "king",
    "leaf",
    "rock",
    "hat",
    "pen",
    "cup",
    "bus",
    "box",
    "key",
    "map",
    "egg",
    "owl",
    "fox",
    "ice",
]


def _items(rng: random.Random, lo: int, hi: int) -> list[str]:
    pool = _WORDS if rng.random() < 0.5 else list(string.ascii_lowercase)
    return [rng.choice(pool) for _ in range(rng.randint(lo, hi))]


def _sequence_task(kind: str) -> Callable[[random.Random], Example]:
    op = (lambda s: s) if kind == "copy" else (lambda s: s[::-1])
    label = "Copy" if kind == "copy" else "Reverse"

    def generate(rng: random.Random) -> Example:
        shots = [_items(rng, 3, 4) for _ in range(2)]
        query = _items(rng, 2, 5) if kind == "copy" else _items(rng, 2, 4)
        lines = [f"{label}: {' '.join(s)} -> {' '.join(op(s))}" for s in shots]
        return Example(prompt=_few_shot(lines, f"{label}: {' '.join(query)} ->"), answer=" ".join(op(query)))

    return generate


def _counting(rng: random.Random) -> Example:
    def one() -> tuple[str, int]:
        word = rng.choice(_WORDS)
        others = [w for w in _WORDS if w != word]
        k = rng.randint(1, 6)
        items = [word] * k + [rng.choice(others) for _ in range(rng.randint(0, 3))]
        rng.shuffle(items)
        return f"Count {word}: {' '.join(items)} ->", k

    q1, a1 = one()
    q, a = one()
    return Example(prompt=_few_shot([f"{q1} {a1}"], q), answer=str(a))


_DAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]
_MONTHS = [
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
]


def _next_item(rng: random.Random) -> Example:
    kind = rng.choice(["step", "step", "letters", "days", "months", "squares"])
    if kind == "step":
        start, step = rng.randint(0, 30), rng.choice([1, 2, 3, 5, 10, 4, 7])
        seq = [str(start + i * step) for i in range(5)]
    elif kind == "squares":
        start = rng.randint(1, 6)
        seq = [str((start + i) ** 2) for i in range(5)]
    elif kind == "letters":
        start, step = rng.randint(0, 15), rng.choice([1, 1, 2])
        seq = [string.ascii_uppercase[start + i * step] for i in range(5)]
    else:
        names = _DAYS if kind == "days" else _MONTHS
        start = rng.randrange(len(names))
        seq = [names[(start + i) % len(names)] for i in range(5)]
    shown = rng.randint(3, 4)
    return Example(prompt=f"Continue the sequence: {', '.join(seq[:shown])},", answer=seq[shown])


def _load_facts() -> dict[str, dict[str, object]]:
    raw = resources.files("lmlens_failure").joinpath("data/facts.json").read_text(encoding="utf-8")
    return json.loads(raw)["tables"]  # type: ignore[no-any-return]


_FACTS: dict[str, dict[str, object]] | None = None


def _facts(rng: random.Random) -> Example:
    global _FACTS
    if _FACTS is None:
        _FACTS = _load_facts()
    name = rng.choice(sorted(_FACTS))
    table = _FACTS[name]
    rows: dict[str, str] = table["rows"]  # type: ignore[assignment]
    question: str = table["question"]  # type: ignore[assignment]
    keys = rng.sample(sorted(rows), 3)
    lines = [f"Q: {question.format(key=k)}\nA: {rows[k]}" for k in keys[:2]]
    return Example(prompt=_few_shot(lines, f"Q: {question.format(key=keys[2])}\nA:"), answer=rows[keys[2]])


def _register_builtins() -> None:
    for level in (1, 2, 3):
        register_task(f"arithmetic_{level}", _arithmetic(level), family="arithmetic", replace=True)
    register_task("copy", _sequence_task("copy"), family="copy", replace=True)
    register_task("reverse", _sequence_task("reverse"), family="reverse", replace=True)
    register_task("counting", _counting, family="counting", replace=True)
    register_task("sequence", _next_item, family="sequence", replace=True)
    register_task("facts", _facts, family="facts", replace=True)


BUILTIN_FAMILIES = ("arithmetic", "copy", "reverse", "counting", "sequence", "facts")

_register_builtins()
