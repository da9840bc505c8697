"""Generate everyday prose with SmolLM2-135M-Instruct, for the shipped anomaly detectors.

The normal corpus decides what "normal" means. A detector fitted only on technical
documentation flags everyday prose; so the shipped defaults are fitted on the model's
own answers to diverse everyday prompts (SmolLM2 is Apache-2.0; its outputs ship with
lmlens) plus prose written for lmlens (``corpus/written.txt``).

    nice python plugins/anomaly/scripts/generate_corpus.py --per-prompt 4

Writes ``src/lmlens_anomaly/corpus/generated.txt``: one text per paragraph
(separated by blank lines), rewritten after every batch, so the run can be stopped
when the CPU budget is spent. Sampling is seeded, so a rerun gives the same file on
the same torch build.
"""

from __future__ import annotations

import argparse
import re
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
OUT = HERE.parent / "src" / "lmlens_anomaly" / "corpus" / "generated.txt"

TOPICS = [
    "Describe a relaxed Sunday morning at home.",
    "Give some tips for keeping a small vegetable garden healthy.",
    "Explain how to cook a simple pasta dinner for two.",
    "Write a short note to a neighbour about a lost cat.",
    "What should someone pack for a weekend trip to the seaside?",
    "Describe the weather in autumn in a small town.",
    "Tell a short story about a child learning to ride a bicycle.",
    "Why is drinking enough water important?",
    "Write an email asking a colleague to move a meeting to Thursday.",
    "Describe a busy train station during rush hour.",
    "How can a family save money on groceries?",
    "Explain why the sky looks blue, for a ten-year-old.",
    "Describe your favourite kind of music and why people like it.",
    "Give advice to a student before their first exam.",
    "What makes a good cup of coffee?",
    "Tell a short story about two friends who get lost in a forest.",
    "Describe how to take care of a new puppy.",
    "What are the benefits of walking every day?",
    "Write a short review of a cosy neighbourhood restaurant.",
    "Explain how a library card works and what you can borrow.",
    "Describe a football match from the point of view of a fan.",
    "How do you prepare for a job interview?",
    "Write a thank-you note to a teacher.",
    "Describe the sounds and smells of a farmers' market.",
    "Explain how to change a flat tyre on a bicycle.",
    "What are some fun things to do on a rainy day?",
    "Tell a short story about a grandmother baking bread.",
    "Describe a simple way to start running as a beginner.",
    "Why do people enjoy reading novels?",
    "Write a short paragraph about the history of a small fishing village.",
    "Explain how to plan a birthday party for a child.",
    "Describe what a nurse does during a typical day.",
    "Give tips for sleeping better at night.",
    "Describe a winter holiday in the mountains.",
    "How do you make a budget for the month?",
    "Write a short story about a lost umbrella.",
    "Explain what recycling is and why it helps.",
    "Describe a visit to a museum with old paintings.",
    "What should you do if you feel stressed at work?",
    "Write a message inviting friends to a picnic in the park.",
    "Explain how plants grow from seeds.",
    "Describe a typical day for a bus driver.",
    "Give advice for learning to cook at home.",
    "Tell a short story about a dog who waits at the door every evening.",
    "Describe the first day of spring in a city park.",
    "Why are friendships important as people grow older?",
    "Explain how to write a good shopping list.",
    "Describe a road trip across the countryside.",
    "What are good manners at a dinner table?",
    "Write a short diary entry about a tiring but happy day.",
    "Explain how the moon changes shape during the month.",
    "Describe how to clean and organise a messy kitchen.",
    "Give tips for a long flight.",
    "Tell a short story about a boy who finds an old map.",
    "Describe a small bakery early in the morning.",
    "How can someone become more confident speaking in public?",
    "Explain why exercise is good for the heart.",
    "Write a short letter to a friend who moved to another city.",
    "Describe a thunderstorm at night.",
    "What are the pros and cons of working from home?",
    "Explain how to look after houseplants.",
    "Describe a wedding in a village garden.",
    "Give advice to someone moving into their first flat.",
    "Tell a short story about a fisherman and a storm.",
    "Explain what a healthy breakfast looks like.",
    "Describe a day at the beach with children.",
]

SYSTEM = "You are a helpful assistant. Answer in plain English prose, in one or two short paragraphs."


def clean(text: str) -> str:
    text = re.sub(r"[*#_`]+", "", text)  # markdown emphasis and headings
    text = re.sub(r"[ \t]+", " ", text)
    paragraphs = [p.strip() for p in re.split(r"\n\s*\n", text) if p.strip()]
    text = " ".join(paragraphs).replace("\n", " ").strip()
    end = max(text.rfind("."), text.rfind("!"), text.rfind("?"))
    return text[: end + 1] if end > 0 else text  # drop a sentence cut off by max_new_tokens


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--per-prompt", type=int, default=4)
    parser.add_argument("--max-new-tokens", type=int, default=110)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    from lmlens import Analyzer

    loaded = Analyzer("smollm2-135m").model
    tokenizer, model = loaded.tokenizer, loaded.model
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    prompts = [
        tokenizer.apply_chat_template(
            [{"role": "system", "content": SYSTEM}, {"role": "user", "content": topic}],
            tokenize=False,
            add_generation_prompt=True,
        )
        for _ in range(args.per_prompt)
        for topic in TOPICS  # every topic once before any twice: a partial run is still diverse
    ]
    texts: list[str] = []
    started = time.time()
    for i in range(0, len(prompts), args.batch):
        batch = tokenizer(prompts[i : i + args.batch], return_tensors="pt", padding=True)
        with torch.inference_mode():
            out = model.generate(
                **batch,
                max_new_tokens=args.max_new_tokens,
                do_sample=True,
                temperature=0.8,
                top_p=0.95,
                repetition_penalty=1.1,
                pad_token_id=tokenizer.pad_token_id,
            )
        for row in out[:, batch["input_ids"].shape[1] :]:
            text = clean(tokenizer.decode(row, skip_special_tokens=True))
            if len(text.split()) >= 12:
                texts.append(text)
        print(f"{i + args.batch}/{len(prompts)} prompts, {len(texts)} texts, {time.time() - started:.0f} s", flush=True)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text("\n\n".join(texts) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
