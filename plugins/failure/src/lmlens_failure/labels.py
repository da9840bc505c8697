"""Run the model greedily on prompts and label each by what it really said.

The signals come from the shared feature pass through the kernel's ``run_forward``
(right-padded batches; reducers read each row's last real token). The greedy
continuation then runs through the kernel's ``greedy_generate`` (KV cache, left-padded,
the model lock held for the loop), several times cheaper on CPU than re-running the
whole prompt through ``run_forward`` for every new token.
Generation stops at a newline, at the end-of-sequence token, after
``max_new_tokens``, or once a checked answer is decided.

Labels: ``failed = 1`` when the first line of the output does not give the answer
(see ``default_check``). For open prompts (no answer) only a degenerate output fails:
empty, or a repetition loop (one token four times in a row, or a two-token unit three
times in a row).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from lmlens.forward import run_forward
from lmlens.generation import greedy_generate
from lmlens.models import LoadedModel
from lmlens_failure.features import Signals, feature_needs, signals_from_activations
from lmlens_failure.tasks import Example

Progress = Callable[[float, str], None]


@dataclass
class Labelled:
    prompt: str
    answer: str | None
    output: str  # what the model said (up to the first newline)
    raw_output: str  # every generated token, decoded
    failed: int  # 1: the model got it wrong
    degenerate: bool
    task: str
    family: str


def _normalise(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip().casefold()


def default_check(output: str, answer: str) -> bool:
    """Right when the first output line is the answer, or starts with it followed by a
    non-alphanumeric character ("Paris." is right for Paris, "195" is wrong for 19)."""
    out, ans = _normalise(output), _normalise(answer)
    if not ans:
        return not out
    if out == ans:
        return True
    return out.startswith(ans) and not out[len(ans)].isalnum()


def is_degenerate(output: str, ids: Sequence[int]) -> bool:
    if not output.strip():
        return True
    ids = list(ids)
    for i in range(len(ids) - 3):
        if ids[i] == ids[i + 1] == ids[i + 2] == ids[i + 3]:
            return True
    return any(ids[i : i + 2] == ids[i + 2 : i + 4] == ids[i + 4 : i + 6] for i in range(len(ids) - 5))


def tokenize(loaded: LoadedModel, text: str) -> list[int]:
    """The same ids ``Analyzer.tokenize`` gives (special tokens added)."""
    return list(loaded.tokenizer(text, add_special_tokens=True)["input_ids"])


def _pad_id(loaded: LoadedModel) -> int:
    tok = loaded.tokenizer
    for cand in (tok.pad_token_id, tok.eos_token_id, 0):
        if cand is not None:
            return int(cand)
    return 0


def _padded(loaded: LoadedModel, rows: Sequence[Sequence[int]], width: int) -> torch.Tensor:
    out = torch.full((len(rows), width), _pad_id(loaded), dtype=torch.long)
    for i, row in enumerate(rows):
        out[i, : len(row)] = torch.as_tensor(list(row), dtype=torch.long)
    return out


def signals_for(
    loaded: LoadedModel,
    id_lists: Sequence[Sequence[int]],
    *,
    batch_size: int = 8,
    progress: Progress | None = None,
) -> Signals:
    """The failure signals of each token list, in right-padded batches."""
    return generate(loaded, id_lists, max_new_tokens=0, batch_size=batch_size, progress=progress)[0]


def greedy_continuations(
    loaded: LoadedModel,
    id_lists: Sequence[Sequence[int]],
    max_new_tokens: int,
    stop: Callable[[int, list[int]], bool] | None = None,
) -> list[list[int]]:
    """Greedy continuations through the kernel's ``greedy_generate`` (KV cache, model lock,
    cancellation between tokens); rows stop at EOS, a newline, or when ``stop`` says so."""
    return greedy_generate(loaded, id_lists, max_new_tokens, stop=stop)


def generate(
    loaded: LoadedModel,
    id_lists: Sequence[Sequence[int]],
    *,
    max_new_tokens: int = 8,
    batch_size: int = 8,
    progress: Progress | None = None,
    stop: Callable[[int, list[int]], bool] | None = None,
) -> tuple[Signals, list[list[int]]]:
    """Signals of each prompt's shared pass (through ``run_forward``), and its greedy
    continuation (token ids; ``stop(index, tokens)`` may end a row early)."""
    info = loaded.info
    parts: list[Signals] = []
    outputs: list[list[int]] = []
    total = len(id_lists)
    for start in range(0, total, batch_size):
        batch = [list(x) for x in id_lists[start : start + batch_size]]
        lengths = [len(x) for x in batch]
        last = torch.as_tensor([n - 1 for n in lengths])
        acts = run_forward(loaded, feature_needs(info, last), input_ids=_padded(loaded, batch, max(lengths)))
        parts.append(signals_from_activations(acts, info, lengths))
        if max_new_tokens > 0:
            row_stop = None if stop is None else (lambda i, toks, s=start: stop(s + i, toks))
            outputs.extend(greedy_continuations(loaded, batch, max_new_tokens, row_stop))
        else:
            outputs.extend([] for _ in batch)
        if progress is not None:
            progress(min(1.0, (start + len(batch)) / total), f"{start + len(batch)}/{total} prompts")
    return Signals.concat(parts), outputs


def label(example: Example, output_ids: Sequence[int], loaded: LoadedModel) -> Labelled:
    raw = loaded.tokenizer.decode(list(output_ids), skip_special_tokens=True)
    first = raw.split("\n", 1)[0]
    degenerate = is_degenerate(first, output_ids)
    if example.answer is None:
        failed = degenerate
    else:
        check = example.check or default_check
        failed = not check(first, example.answer)
    return Labelled(
        prompt=example.prompt,
        answer=example.answer,
        output=first.strip(),
        raw_output=raw,
        failed=int(failed),
        degenerate=degenerate,
        task=example.task,
        family=example.family,
    )


def run_examples(
    loaded: LoadedModel,
    examples: Sequence[Example],
    *,
    max_new_tokens: int = 8,
    batch_size: int = 8,
    progress: Progress | None = None,
) -> tuple[list[Labelled], Signals]:
    """Generate for every example, label it, and keep the signals of its shared pass.

    A row with a default-checked answer stops once its output is longer than the answer
    (the check is decided then), so ``output`` is what the model said up to that point.
    """
    ids = [tokenize(loaded, ex.prompt) for ex in examples]
    order = np.argsort([len(x) for x in ids], kind="stable")  # similar lengths share a batch: less padding
    ordered = [examples[i] for i in order]

    def decided(i: int, toks: list[int]) -> bool:
        """Enough output to judge a default-checked answer: past the answer's length."""
        ex = ordered[i]
        if ex.answer is None or ex.check is not None:
            return False
        return len(_normalise(loaded.tokenizer.decode(toks, skip_special_tokens=True))) > len(_normalise(ex.answer))

    sig, outs = generate(
        loaded,
        [ids[i] for i in order],
        max_new_tokens=max_new_tokens,
        batch_size=batch_size,
        progress=progress,
        stop=decided,
    )
    inverse = np.empty_like(order)
    inverse[order] = np.arange(len(order))
    sig = sig.take(inverse)
    outs = [outs[i] for i in inverse]
    return [label(ex, out, loaded) for ex, out in zip(examples, outs, strict=True)], sig
