"""The offline knowledge-retention probe: name an encyclopedia article from its short description.

Built at run time from the embedded corpus's held-out slice only (the last `EVAL_EXTRACTS` entries with an extract, in
file order: the articles perplexity is measured on, never calibration text), written as an lm-eval task (YAML +
JSONL) into a folder the caller owns, and scored by log-likelihood. The construction is deterministic (a fixed
seed). It is a probe for knowledge lost by pruning, not a published benchmark (docs/evaluation.md).

Why the short description (the corpus's Wikidata-style `description`, e.g. "Eighth planet from the Sun") rather than
the opening sentence: an opening sentence restates the title in many forms (plurals, adjectives, abbreviations) that
masking misses, so it partly tests reading rather than recall; and it is several times longer, which multiplies the
cost of every evaluation (each choice is a full forward pass in lm-eval).
"""

from __future__ import annotations

import json
import random
import re
from functools import lru_cache
from pathlib import Path
from typing import Any

from ..data.text import EVAL_EXTRACTS, corpus_path

PROBE_TASK = "knowledge_probe"
PROBE_VERSION = 1
PROBE_SEED = 0
PROBE_CHOICES = 4  # the right title and three distractors: chance is 25%
MASK = "___"
# Descriptions shorter than this (in words, once the title is masked) say too little to name the article.
MIN_WORDS = 2
_STOPWORDS = {"the", "and", "of", "in", "on", "for", "with", "from", "a", "an", "to", "by", "at", "or"}


@lru_cache(maxsize=1)
def heldout_entries() -> tuple[dict[str, Any], ...]:
    """The corpus entries (title, extract, description, topic) of the held-out slice, in file order: the same
    extracts, in the same order, as `corpus_text("evaluation")`."""
    data = json.loads(corpus_path().read_text(encoding="utf-8"))
    entries = [entry for entry in data.values() if entry.get("extract")]
    return tuple(entries[-EVAL_EXTRACTS:])


def mask_title(text: str, title: str) -> str:
    """Hide the title in a text: the whole title (without a parenthesised qualifier, e.g. "Mercury (planet)"), then
    each of its words of four letters or more that is not a stop word, case-insensitively, plurals included."""
    base = re.sub(r"\s*\(.*?\)\s*$", "", title).strip()
    words = [w for w in re.findall(r"[\w'-]+", base) if len(w) >= 4 and w.lower() not in _STOPWORDS]
    for phrase in [base, *sorted(words, key=len, reverse=True)]:
        pattern = r"(?<!\w)" + re.escape(phrase) + r"(?:e?s)?(?!\w)"
        text = re.sub(pattern, MASK, text, flags=re.IGNORECASE)
    return text


def probe_items(seed: int = PROBE_SEED, num_choices: int = PROBE_CHOICES) -> list[dict[str, Any]]:
    """The probe's questions, in held-out file order: the article's description (title words masked),
    `num_choices` titles (the right one and distractors of the same corpus `topic` drawn from the held-out slice,
    never one with the same description) and the index of the right one. Articles without a usable description, or
    whose topic has too few other titles, are left out."""
    entries = [e for e in heldout_entries() if (e.get("description") or "").strip()]
    by_topic: dict[str, list[dict[str, Any]]] = {}
    for entry in entries:
        by_topic.setdefault(entry.get("topic") or "", []).append(entry)
    rng = random.Random(seed)
    items = []
    for entry in entries:
        title, description = entry["title"], entry["description"].strip()
        masked = mask_title(description, title)
        others = sorted(
            {
                e["title"]
                for e in by_topic[entry.get("topic") or ""]
                if e["title"].lower() != title.lower() and e["description"].strip().lower() != description.lower()
            }
        )
        if len(masked.replace(MASK, " ").split()) < MIN_WORDS or len(others) < num_choices - 1:
            continue
        choices = [*rng.sample(others, num_choices - 1), title]
        rng.shuffle(choices)
        text = f"Encyclopedia article described as: {masked}\nArticle title:"
        items.append({"text": text, "choices": choices, "gold": choices.index(title), "topic": entry.get("topic")})
    return items


def write_probe_task(folder: str | Path, seed: int = PROBE_SEED) -> str:
    """Write the probe as a local lm-eval task (`knowledge_probe.yaml` + `knowledge_probe.jsonl`) into `folder`;
    returns the task name."""
    import yaml

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    data = folder / f"{PROBE_TASK}.jsonl"
    with data.open("w", encoding="utf-8") as out:
        for item in probe_items(seed):
            out.write(json.dumps(item, ensure_ascii=False) + "\n")
    config = {
        "task": PROBE_TASK,
        "dataset_path": "json",
        "dataset_kwargs": {"data_files": {"test": str(data.resolve())}},
        "test_split": "test",
        "output_type": "multiple_choice",
        "doc_to_text": "{{text}}",
        "doc_to_choice": "{{choices}}",
        "doc_to_target": "gold",
        "metric_list": [
            {"metric": "acc", "aggregation": "mean", "higher_is_better": True},
            {"metric": "acc_norm", "aggregation": "mean", "higher_is_better": True},
        ],
        "metadata": {"version": PROBE_VERSION, "seed": seed, "choices": PROBE_CHOICES},
    }
    (folder / f"{PROBE_TASK}.yaml").write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    return PROBE_TASK
