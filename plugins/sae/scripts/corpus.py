"""The shippable training corpus of the default SAE.

Two sources the project may legally ship:

- the Python documentation inside the standard library (``pydoc_data.topics``, PSF licence);
- SmolLM2-135M-Instruct's own generations (Apache-2.0 model) from diverse prompts:
  everyday prose, stories, letters, explanations, dialogue, lists, code.

``python corpus.py generate OUT.jsonl`` samples the generations (seeded; minutes on a CPU);
``load(split)`` returns the train or held-out texts. Held out: every 8th pydoc topic and
the generations of a disjoint set of subjects.
"""

from __future__ import annotations

import json
import random
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
GENERATIONS = HERE / "data" / "generations.jsonl"

SUBJECTS = [
    "a rainy afternoon in a small town", "how bread is baked", "the history of the bicycle", "a trip to the mountains",
    "why the sky is blue", "a letter to an old friend", "training a puppy", "the rules of chess",
    "a busy train station",
    "how vaccines work", "planting a vegetable garden", "a job interview", "the life of honeybees", "saving money",
    "a football match", "the moon landing", "learning a new language", "a birthday party", "how rain forms",
    "the invention of the printing press", "a visit to the dentist", "climate and weather", "a haunted house",
    "cooking pasta", "the Roman empire", "a lost wallet", "how computers store numbers", "a summer at the beach",
    "the human heart", "moving to a new city", "a library at night", "volcanoes", "writing a good essay",
    "an argument between neighbours", "the stock market", "a fishing trip", "photosynthesis", "a wedding",
    "running a marathon", "the French revolution", "a cat that learns to fly", "electric cars", "sleep and dreams",
    "a cooking competition", "the ocean floor", "a broken phone", "music lessons", "a snowstorm", "ancient Egypt",
    "friendship", "a robot in a kitchen", "recycling", "a hospital night shift", "the solar system", "a farmers market",
    "public transport", "a museum tour", "the water cycle", "an apology", "a startup company", "mountain climbing",
    "a child's first day at school", "earthquakes", "the internet", "a detective story", "healthy breakfast ideas",
    "the Olympic games", "a storm at sea", "how to fix a flat tyre", "a village festival", "memory and forgetting",
]
HELD_OUT_SUBJECTS = [
    "a night at the theatre", "how glaciers move", "a grandmother's recipe", "the history of tea",
    "a missed flight", "why cats purr", "building a treehouse", "the first telephone",
]
TEMPLATES_CHAT = [
    "Write a short story about {s}.", "Explain {s} to a ten-year-old.", "Write a news report about {s}.",
    "Describe {s} in detail.", "Write a diary entry about {s}.", "Give five tips about {s}.",
    "Write a dialogue between two people about {s}.", "Write an essay paragraph on {s}.",
    "Write a Python function related to {s}, with comments.",
]
TEMPLATES_RAW = [
    "Here is a story about {s}. ", "The article below is about {s}.\n\n", "Notes on {s}:\n",
]


def pydoc_texts() -> list[tuple[str, str]]:
    import pydoc_data.topics

    return sorted(pydoc_data.topics.topics.items())


def prompts(subjects: list[str], seed: int) -> list[tuple[str, bool]]:
    rng = random.Random(seed)
    out = []
    for s in subjects:
        for t in rng.sample(TEMPLATES_CHAT, 3):
            out.append((t.format(s=s), True))
        out.append((rng.choice(TEMPLATES_RAW).format(s=s), False))
    rng.shuffle(out)
    return out


def generate(path: Path, *, max_new_tokens: int = 96, batch: int = 32, seed: int = 0) -> None:
    import torch

    torch.set_num_threads(1)  # a shared 2-core machine: one thread per process runs fastest

    from lmlens import Analyzer

    analyzer = Analyzer(model="smollm2-135m")
    loaded = analyzer.load_model()
    tok = loaded.tokenizer
    tok.padding_side = "left"
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    torch.manual_seed(seed)
    # held-out prompts first: the file is usable whenever generation is stopped
    jobs = [(p, chat, "held_out") for p, chat in prompts(HELD_OUT_SUBJECTS, seed + 1)]
    jobs += [(p, chat, "train") for p, chat in prompts(SUBJECTS, seed)]
    path.parent.mkdir(parents=True, exist_ok=True)
    started = time.time()
    n_tokens = 0
    with path.open("w") as out:
        for i in range(0, len(jobs), batch):
            group = jobs[i:i + batch]
            rendered = [
                tok.apply_chat_template([{"role": "user", "content": p}], tokenize=False, add_generation_prompt=True)
                if chat else p
                for p, chat, _ in group
            ]
            enc = tok(rendered, return_tensors="pt", padding=True, add_special_tokens=False)
            with torch.inference_mode():
                gen = loaded.model.generate(
                    **enc, max_new_tokens=max_new_tokens, do_sample=True, temperature=0.8, top_p=0.95,
                    pad_token_id=tok.pad_token_id, repetition_penalty=1.1,
                )
            for (prompt, chat, split), row in zip(group, gen[:, enc["input_ids"].shape[1]:], strict=True):
                text = tok.decode(row, skip_special_tokens=True).strip()
                n_tokens += int((row != tok.pad_token_id).sum())
                body = text if chat else prompt + text
                out.write(json.dumps({"split": split, "prompt": prompt, "text": body}) + "\n")
            out.flush()
            print(f"{i + len(group)}/{len(jobs)} prompts, {n_tokens} tokens, {time.time() - started:.0f}s",
                  flush=True)


def load(split: str, source: str = "all") -> list[str]:
    """Texts of ``split`` ("train" or "held_out") from ``source`` ("pydoc", "generations" or "all")."""
    texts = []
    if source in ("pydoc", "all"):
        for i, (_, body) in enumerate(pydoc_texts()):
            if (i % 8 == 7) == (split == "held_out"):
                texts.append(body)
    if source in ("generations", "all") and GENERATIONS.is_file():
        for line in GENERATIONS.read_text().splitlines():
            row = json.loads(line)
            if row["split"] == split and row["text"].strip():
                texts.append(row["text"])
    return texts


if __name__ == "__main__":
    if len(sys.argv) >= 2 and sys.argv[1] == "generate":
        generate(Path(sys.argv[2]) if len(sys.argv) > 2 else GENERATIONS)
    else:
        for split in ("train", "held_out"):
            texts = load(split)
            print(split, len(texts), "texts", sum(len(t) for t in texts), "chars")
