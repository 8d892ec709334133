"""lm-eval tasks through `GBLMPruner.evaluate_tasks(tasks)`: numbers a hand computation gives, side-car, model-index,
the card, no network, and the errors raised before any evaluation runs. A tiny random LLaMA with a word-level
tokenizer built locally; local task YAMLs over JSONL files."""

from __future__ import annotations

import copy
import json
import socket

import pytest
import torch

pytest.importorskip("lm_eval")

from optimum_gblm import GBLMConfig, GBLMPruner  # noqa: E402
from optimum_gblm.evaluation.harness import resolve_tasks, token_stats  # noqa: E402
from tests.helpers.tiny_models import TINY_LLAMA, tiny_text, tiny_tokenizer  # noqa: E402

MAX_GEN = 4


@pytest.fixture(scope="module")
def tiny():
    from transformers import AutoConfig, AutoModelForCausalLM

    tokenizer = tiny_tokenizer()
    torch.manual_seed(0)
    ids = {"bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id}
    config = AutoConfig.for_model(
        "llama", **TINY_LLAMA, vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id, **ids
    )
    return AutoModelForCausalLM.from_config(config, dtype=torch.float32).eval(), tokenizer


@pytest.fixture
def no_network(monkeypatch):
    """Any attempt to open a connection fails the test."""

    def refuse(*args, **kwargs):
        raise AssertionError(f"network access attempted: {args}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


def _loglik(model, tokenizer, context: str, continuation: str) -> float:
    """log p(continuation | context), computed directly with the model."""
    ctx = tokenizer(context, add_special_tokens=False)["input_ids"]
    cont = tokenizer(continuation, add_special_tokens=False)["input_ids"]
    ids = torch.tensor([ctx + cont])
    with torch.no_grad():
        logprobs = torch.log_softmax(model(ids).logits[0, :-1].float(), dim=-1)
    return float(sum(logprobs[len(ctx) - 1 + i, tok] for i, tok in enumerate(cont)))


def _greedy(model, tokenizer, context: str) -> tuple[str, int]:
    """Greedy answer cut at the first '.', and its token count."""
    ids = torch.tensor([tokenizer(context, add_special_tokens=False)["input_ids"]])
    with torch.no_grad():
        out = model.generate(
            ids, max_new_tokens=MAX_GEN, do_sample=False, pad_token_id=tokenizer.pad_token_id, eos_token_id=None
        )
    text = tokenizer.decode(out[0, ids.shape[1] :]).split(".")[0]
    return text, len(tokenizer(text, add_special_tokens=False)["input_ids"])


def _write_task(folder, name: str, rows: list[dict], **config) -> str:
    import yaml

    data = folder / f"{name}.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    task = {"task": name, "dataset_path": "json", "dataset_kwargs": {"data_files": {"test": str(data)}}}
    task.update(test_split="test", **config)
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(task))
    return str(path)


@pytest.fixture(scope="module")
def local_tasks(tiny, tmp_path_factory):
    """A multiple-choice and a generation task whose expected scores are 0.5 by construction: half of the golds are
    the model's own hand-computed choice or greedy answer, the other half are not."""
    model, tokenizer = tiny
    tmp_path = tmp_path_factory.mktemp("tasks")
    lines = [line.rstrip(" .") for line in tiny_text(40, seed=3).splitlines()]
    words = ["rivers", "music", "light", "stone"]
    mc_rows, gen_rows, counts = [], [], []
    for i, line in enumerate(lines[:12]):
        context = " ".join(line.split()[:6])
        best = max(range(len(words)), key=lambda k: _loglik(model, tokenizer, context, " " + words[k]))
        mc_rows.append({"q": context, "choices": words, "gold": best if i % 2 == 0 else (best + 1) % len(words)})
        answer, n = _greedy(model, tokenizer, context)
        counts.append(n)
        gen_rows.append({"q": context, "answer": answer if i % 2 == 0 else answer + " moon"})
    mc = _write_task(
        tmp_path,
        "tiny_mc",
        mc_rows,
        output_type="multiple_choice",
        doc_to_text="{{q}}",
        doc_to_choice="{{choices}}",
        doc_to_target="gold",
        metric_list=[{"metric": "acc", "aggregation": "mean", "higher_is_better": True}],
    )
    gen = _write_task(
        tmp_path,
        "tiny_gen",
        gen_rows,
        output_type="generate_until",
        doc_to_text="{{q}}",
        doc_to_target="{{answer}}",
        generation_kwargs={"until": ["."], "max_gen_toks": MAX_GEN, "do_sample": False},
        metric_list=[{"metric": "exact_match", "aggregation": "mean", "higher_is_better": True}],
    )
    return mc, gen, counts


def test_local_tasks_give_the_hand_computed_numbers_and_reach_sidecar_and_card(
    tiny, local_tasks, tmp_path, no_network
):
    from huggingface_hub import ModelCard

    model, tokenizer = tiny
    mc, gen, counts = local_tasks
    # a copy: prune() works in place and the module's other tests need the dense model the tasks were built from
    pruner = GBLMPruner(copy.deepcopy(model), GBLMConfig(method="magnitude", sparsity=0.5), tokenizer=tokenizer)
    values = pruner.evaluate_tasks([mc, gen], progress=False)
    assert values["tiny_mc"]["acc"] == pytest.approx(0.5)
    assert values["tiny_gen"]["exact_match"] == pytest.approx(0.5)
    assert values["tiny_mc"]["acc_stderr"] == pytest.approx((0.25 * 12 / 11 / 12) ** 0.5)  # sample std / sqrt(n)
    generation = pruner.task_results["dense"]["tiny_gen"]["generation"]
    assert generation["tokens"]["mean"] == pytest.approx(sum(counts) / len(counts))
    assert generation["tokens"]["max"] == max(counts) and generation["tokens"]["answers"] == len(counts)
    assert generation["policy"]["until"] == ["."] and generation["policy"]["max_gen_toks"] == MAX_GEN

    pruner.prune(progress=False)
    pruned = pruner.evaluate_tasks([mc], progress=False)
    assert set(pruner.task_results) == {"dense", "pruned"} and 0 <= pruned["tiny_mc"]["acc"] <= 1

    folder = pruner.save_pretrained(tmp_path / "out")
    sidecar = json.loads((folder / "gblm_config.json").read_text())
    assert sidecar["tasks"]["dense"]["tiny_mc"]["metrics"]["acc"] == pytest.approx(0.5)
    assert sidecar["tasks"]["pruned"]["tiny_mc"]["metrics"]["acc"] == pytest.approx(pruned["tiny_mc"]["acc"])
    card = ModelCard.load(folder / "README.md")
    found = {(r.dataset_name, r.metric_type, r.metric_name): r.metric_value for r in card.data.eval_results}
    assert found[("tiny_mc", "acc", "tiny_mc acc (dense)")] == pytest.approx(0.5)
    assert found[("tiny_mc", "acc", "tiny_mc acc (pruned)")] == pytest.approx(pruned["tiny_mc"]["acc"], abs=1e-6)
    assert found[("tiny_gen", "exact_match", "tiny_gen exact_match (dense)")] == pytest.approx(0.5)
    assert ("tiny_gen", "generated_tokens_mean", "tiny_gen generated_tokens_mean (dense)") in found
    assert "| tiny_gen | generated tokens" in card.text and "at most 4 new tokens" in card.text


def test_bad_input_is_refused_before_evaluation(tiny, tmp_path, monkeypatch):
    model, tokenizer = tiny
    with pytest.raises(ValueError, match="tokenizer"):
        GBLMPruner(model, GBLMConfig(), tokenizer=None).evaluate_tasks(["knowledge_probe"])
    with pytest.raises(TypeError, match="unexpected keyword argument 'max_windows'"):
        GBLMPruner(model, GBLMConfig(), tokenizer=tokenizer).evaluate_tasks(["knowledge_probe"], max_windows=3)
    with pytest.raises(ValueError, match="batch_size must be a positive int"):
        GBLMPruner(model, GBLMConfig(), tokenizer=tokenizer).evaluate_tasks(["knowledge_probe"], batch_size=0)
    with pytest.raises(TypeError, match="limit= does not apply .* perplexity, .* evaluate_tasks"):
        GBLMPruner(model, GBLMConfig(), tokenizer=tokenizer).evaluate(limit=3)  # a task option on the metric
    # the deprecated form refuses the metric's options as it did
    with pytest.warns(FutureWarning), pytest.raises(TypeError, match="max_windows= does not apply"):
        GBLMPruner(model, GBLMConfig(), tokenizer=tokenizer).evaluate(tasks=["knowledge_probe"], max_windows=3)
    with pytest.raises(ValueError, match="does not exist"):
        resolve_tasks([str(tmp_path / "missing.yaml")], tmp_path)
    with pytest.raises(ValueError, match="non-empty"):
        resolve_tasks([], tmp_path)


def test_evaluate_with_tasks_still_works_for_one_release(tiny, local_tasks, no_network):
    """The former spelling, evaluate(tasks=...), warns (pointing at the caller) and does what evaluate_tasks does."""
    model, tokenizer = tiny
    mc, _, _ = local_tasks
    old, new = (GBLMPruner(model, GBLMConfig(), tokenizer=tokenizer) for _ in range(2))
    with pytest.warns(FutureWarning, match=r"use evaluate_tasks\(tasks") as caught:
        values = old.evaluate("base", tasks=[mc], limit=4, progress=False)
    assert caught[0].filename == __file__  # the warning names the line that calls evaluate
    assert values == new.evaluate_tasks([mc], "base", limit=4, progress=False)
    assert old.task_results == new.task_results and set(old.task_results) == {"base"}
    assert old.task_results["base"]["tiny_mc"]["settings"]["batch_size"] == 8  # lm-eval's default, not the images'
    assert old.results == {} == new.results


def test_unknown_and_hub_tasks_are_clear_errors_offline(tmp_path, monkeypatch, no_network):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))  # no cached copy of any Hub dataset
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "datasets"))
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(ValueError, match=r"'arc_easyy': did you mean arc_easy"):
        resolve_tasks(["arc_easyy"], tmp_path)
    with pytest.raises(ValueError, match=r"arc_easy \(dataset allenai/ai2_arc\).*HF_HUB_OFFLINE=1"):
        resolve_tasks(["arc_easy"], tmp_path)


def test_token_stats_are_nearest_rank_percentiles():
    stats = token_stats([5, 1, 3, 2, 4])
    assert stats == {
        "answers": 5,
        "mean": 3.0,
        "min": 1,
        "p10": 1,
        "p50": 3,
        "p90": 5,
        "p99": 5,
        "max": 5,
        "total": 15,
    }
    assert token_stats([]) == {"answers": 0}


def test_cli_evaluates_tasks_side_by_side_and_records_them(tiny, local_tasks, tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    from huggingface_hub import ModelCard

    model, tokenizer = tiny
    mc, _, _ = local_tasks
    dense = tmp_path / "dense"
    model.save_pretrained(dense)
    tokenizer.save_pretrained(dense)
    pruner = GBLMPruner.from_pretrained(str(dense), GBLMConfig(method="magnitude", sparsity=0.5))
    pruner.prune(progress=False)
    out = pruner.save_pretrained(tmp_path / "pruned")
    cli = [str(Path(sys.executable).parent / "optimum-cli"), "gblm", "evaluate"]
    env = {"HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1"}
    env = {**{k: v for k, v in __import__("os").environ.items() if k != "PYTHONPATH"}, **env}
    run = [*cli, str(out), "--tasks", mc, "--compare", str(dense), "--record", "--no-progress"]
    # from a folder outside any git repository, where lm-eval's `git describe` fails (and lm-eval falls back)
    result = subprocess.run(run, capture_output=True, text=True, env=env, timeout=300, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Memory plan" not in result.stderr  # an evaluation runs no phase of the pruning planner
    assert "not a git repository" not in result.stderr
    header, row = result.stdout.splitlines()[:2]
    assert header.split() == ["task", "metric", "dense", "pruned", "change"]
    assert row.split()[:4] == ["tiny_mc", "acc", "0.5000", "±"]  # the dense model's hand-computed accuracy
    sidecar = json.loads((out / "gblm_config.json").read_text())
    assert sidecar["tasks"]["dense"]["tiny_mc"]["metrics"]["acc"] == pytest.approx(0.5)
    assert set(sidecar["tasks"]) == {"dense", "pruned"} and sidecar["pruning_map"]
    assert any(r.metric_name == "tiny_mc acc (pruned)" for r in ModelCard.load(out / "README.md").data.eval_results)

    before = (out / "gblm_config.json").read_bytes()
    bad = subprocess.run(
        [*cli, str(out), "--tasks", str(tmp_path / "no.yaml"), "--record"],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert bad.returncode == 2 and "does not exist" in bad.stderr.strip().splitlines()[-1]
    assert (out / "gblm_config.json").read_bytes() == before


def test_knowledge_probe_is_built_from_the_heldout_slice_only(tmp_path):
    from optimum_gblm.data.text import corpus_text
    from optimum_gblm.evaluation.knowledge import PROBE_CHOICES, heldout_entries, probe_items, write_probe_task

    entries = heldout_entries()
    assert "\n\n".join(e["extract"] for e in entries) == corpus_text("evaluation")  # the perplexity text, in order
    calibration = corpus_text("calibration")
    assert all(e["extract"] not in calibration for e in entries[:50])
    items = probe_items()
    assert items == probe_items() and len(items) > 300  # deterministic, a few hundred questions
    titles = {e["title"]: e for e in entries}
    for item in items:
        assert len(set(item["choices"])) == PROBE_CHOICES and all(c in titles for c in item["choices"])
        right = titles[item["choices"][item["gold"]]]
        assert right["description"].strip().split()[-1].lower() in item["text"].lower() or "___" in item["text"]
        descriptions = [titles[c]["description"].strip().lower() for c in item["choices"]]
        assert descriptions.count(right["description"].strip().lower()) == 1  # no distractor fits as well
    assert sum(item["gold"] == 0 for item in items) < len(items) / 2  # the right title is not always first
    assert write_probe_task(tmp_path) == "knowledge_probe"
    lines = (tmp_path / "knowledge_probe.jsonl").read_text().splitlines()
    assert [json.loads(line) for line in lines] == items


def test_knowledge_probe_runs_through_lm_eval(tiny, no_network):
    model, tokenizer = tiny
    pruner = GBLMPruner(model, GBLMConfig(), tokenizer=tokenizer)
    values = pruner.evaluate_tasks(["knowledge_probe"], limit=6, progress=False)["knowledge_probe"]
    entry = pruner.task_results["dense"]["knowledge_probe"]
    assert entry["samples"] == 6 and entry["source"] == "generated" and 0 <= values["acc"] <= 1
    assert {"acc", "acc_norm", "acc_stderr", "acc_norm_stderr"} <= set(values)


def test_cli_prune_runs_tasks_on_dense_and_pruned_and_saves_them(tiny, local_tasks, tmp_path):
    """`prune --tasks`: the dense model before pruning and the pruned one after, in one call; both land in the
    side-car and the card's model-index, and the summary table is printed. A bad task is refused before loading."""
    import subprocess
    import sys
    from pathlib import Path

    from huggingface_hub import ModelCard

    model, tokenizer = tiny
    mc, _, _ = local_tasks
    dense = tmp_path / "dense"
    model.save_pretrained(dense)
    tokenizer.save_pretrained(dense)
    text = tmp_path / "calib.txt"
    text.write_text(tiny_text(200, seed=5))
    cli = [str(Path(sys.executable).parent / "optimum-cli"), "gblm", "prune", "--model", str(dense)]
    cli += ["--method", "magnitude", "--sparsity", "0.5", "--calibration", str(text), "--num-samples", "2"]
    cli += ["--seqlen", "16", "--no-progress"]
    env = {"HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1"}
    env = {**{k: v for k, v in __import__("os").environ.items() if k != "PYTHONPATH"}, **env}
    out = tmp_path / "pruned"
    result = subprocess.run(
        [*cli, "--output", str(out), "--tasks", mc], capture_output=True, text=True, env=env, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    table = result.stdout.splitlines()
    header = next(i for i, line in enumerate(table) if line.split()[:2] == ["task", "metric"])
    assert table[header].split() == ["task", "metric", "dense", "pruned", "change"]
    assert table[header + 1].split()[:4] == ["tiny_mc", "acc", "0.5000", "±"]  # the hand-computed dense accuracy
    sidecar = json.loads((out / "gblm_config.json").read_text())
    assert set(sidecar["tasks"]) == {"dense", "pruned"}
    assert sidecar["tasks"]["dense"]["tiny_mc"]["metrics"]["acc"] == pytest.approx(0.5)
    names = {r.metric_name for r in ModelCard.load(out / "README.md").data.eval_results}
    assert {"tiny_mc acc (dense)", "tiny_mc acc (pruned)"} <= names

    missing = tmp_path / "never"
    bad = subprocess.run(
        [*cli, "--output", str(missing), "--tasks", "no_such_task_xyz"], capture_output=True, text=True, env=env
    )
    assert bad.returncode == 2 and "no_such_task_xyz" in bad.stderr.strip().splitlines()[-1]
    assert not missing.exists()
