"""Model-zoo publishing against the local Hub: publish, resume, report invalid and failing entries."""

from __future__ import annotations

import functools
import json
from pathlib import Path

import pytest

from optimum_gblm import GBLMPruner, load_manifest, publish_zoo
from tests.helpers.hub_server import LocalHubServer, patch_hub_in_process
from tests.test_cards import write_text, write_tiny_model

TOKEN = "hf_SeCrEt_zoo_token_0815"
REPO = Path(__file__).resolve().parents[1]

MANIFEST = """\
organization: test-org
collection:
  title: Tiny GBLM zoo
defaults:
  num_samples: 4
  seqlen: 16
  calibration: ./text.txt
  device: cpu
evaluation:
  seqlen: 16
  max_windows: 2
  source: ./text.txt
  progress: false
models:
  - ./tiny-llama
methods: [wanda, magnitude]
patterns: [unstructured]
sparsities: [0.5]
"""


@pytest.fixture
def hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> LocalHubServer:
    with LocalHubServer(tmp_path / "hub-store", token=TOKEN) as server:
        patch_hub_in_process(monkeypatch, server.endpoint, token=TOKEN, cache_dir=tmp_path / "hf-cache")
        yield server


@pytest.fixture
def workspace(tmp_path: Path) -> Path:
    root = tmp_path / "zoo"
    root.mkdir()
    write_tiny_model(root / "tiny-llama")
    write_text(root / "text.txt")
    return root


def _line_of(text: str, needle: str) -> int:
    return next(i for i, line in enumerate(text.splitlines(), 1) if needle in line)


def test_zoo_publishes_then_resumes(
    hub: LocalHubServer, workspace: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    from optimum_gblm.evaluation import PerplexityEvaluator

    manifest = workspace / "zoo.yaml"
    manifest.write_text(MANIFEST)
    table = tmp_path / "out" / "MODEL_ZOO.md"
    measured = []
    evaluate = PerplexityEvaluator.evaluate
    spy = functools.wraps(evaluate)(lambda *a, **k: measured.append(k) or evaluate(*a, **k))
    monkeypatch.setattr(PerplexityEvaluator, "evaluate", spy)
    result = publish_zoo(manifest, token=TOKEN, endpoint=hub.endpoint, work_dir=tmp_path / "work", table_path=table)
    repos = ["test-org/tiny-llama-wanda-unstructured-50", "test-org/tiny-llama-magnitude-unstructured-50"]
    assert result.ok and [e.repo_id for e in result.published] == repos
    assert len(measured) == 3  # the dense base once, each pruned model once
    sidecars = [json.loads(hub.file_content(repo, "gblm_config.json")) for repo in repos]
    assert sidecars[0]["results"]["dense_perplexity"] == sidecars[1]["results"]["dense_perplexity"]
    settings = {"source": str(workspace / "text.txt"), "seqlen": 16, "max_windows": 2, "windows": 2}
    assert all(s["evaluation"] == {"dense": settings, "pruned": settings} for s in sidecars)
    text = table.read_text()
    assert "| Evaluation |" in text and text.count("`text.txt`: max_windows=2, seqlen=16, windows=2") == 2
    for repo in repos:
        assert f"[{repo}]({hub.endpoint}/{repo})" in text
        sidecar = json.loads(hub.file_content(repo, "gblm_config.json"))
        assert sidecar["repo_id"] == repo and {"dense_perplexity", "pruned_perplexity"} <= set(sidecar["results"])
        assert f"{sidecar['results']['pruned_perplexity']:.2f}" in text
        assert "model-index" in hub.file_content(repo, "README.md").decode()
    (collection,) = hub.collections.values()
    assert result.collection_slug == collection["slug"] and collection["title"] == "Tiny GBLM zoo"
    assert [i["id"] for i in collection["items"]] == repos and "wanda" in collection["items"][0]["note"]["text"]
    assert collection["description"].startswith("2 sparse checkpoints") and len(collection["description"]) <= 150
    commits = {repo: len(hub.commits(repo)) for repo in repos}

    def no_pruning(*args, **kwargs):
        raise AssertionError("an entry that is already published was pruned again")

    monkeypatch.setattr(GBLMPruner, "from_pretrained", no_pruning)
    again = publish_zoo(manifest, token=TOKEN, endpoint=hub.endpoint, work_dir=tmp_path / "work", table_path=table)
    assert [e.repo_id for e in again.skipped] == repos and not again.published and again.ok
    assert {repo: len(hub.commits(repo)) for repo in repos} == commits
    assert table.read_text() == text  # the table is rebuilt from the remote side-cars
    assert len(hub.collections) == 1 and len(next(iter(hub.collections.values()))["items"]) == 2


def test_invalid_and_failing_entries_are_reported_others_proceed(hub: LocalHubServer, workspace: Path):
    manifest = workspace / "zoo.yaml"
    text = """\
organization: test-org
defaults:
  device: cpu
entries:
  - model: ./tiny-llama
    method: magnitude
    sparsity: 0.5
  - model: ./tiny-llama
    method: magnitude
    pattern: 2:4
    sparsity: 0.6
  - model: ./no-such-model
    method: magnitude
  - model: ./tiny-llama
    method: magnitude
    pattern: "4:8"
"""
    manifest.write_text(text)
    result = publish_zoo(manifest, token=TOKEN, endpoint=hub.endpoint, evaluate=False)
    statuses = [(e.status, e.line) for e in result.entries]
    assert statuses[1] == ("invalid", _line_of(text, "pattern: 2:4")) and "sparsity" in result.entries[1].error
    assert statuses[2] == ("invalid", _line_of(text, "no-such-model")) and "no-such-model" in result.entries[2].error
    assert [e.repo_id for e in result.published] == [
        "test-org/tiny-llama-magnitude-unstructured-50",
        "test-org/tiny-llama-magnitude-4of8-50",
    ]
    assert not result.ok and result.collection_slug is None  # no collection asked for
    assert "## Not published" in result.table and f"line {statuses[1][1]}" in result.table


def test_cartesian_manifest_lines_and_dry_run(tmp_path: Path):
    text = """\
organization: test-org
defaults:
  seqlen: 16
models: [org/base-model]
methods:
  - wanda
  - nope
patterns: [unstructured, 2:4]
sparsities: [0.5, 0.7]
"""
    path = tmp_path / "zoo.yaml"
    path.write_text(text)
    zoo = load_manifest(path)
    combos = [(e.config["method"], e.config["pattern"], e.config["sparsity"]) for e in zoo.entries]
    assert combos[:3] == [("wanda", "unstructured", 0.5), ("wanda", "unstructured", 0.7), ("wanda", "2:4", 0.5)]
    assert len(combos) == 6  # an N:M pattern fixes its own sparsity: no 2:4 x 0.7 entry
    result = publish_zoo(path, dry_run=True, table_path=tmp_path / "MODEL_ZOO.md")
    invalid = [e for e in result.entries if e.status == "invalid"]
    assert len(invalid) == 3 and {e.line for e in invalid} == {_line_of(text, "- nope")}
    assert [e.status for e in result.entries].count("planned") == 3
    assert "`test-org/base-model-wanda-2of4-50`" in (tmp_path / "MODEL_ZOO.md").read_text()

    as_json = tmp_path / "zoo.json"
    as_json.write_text(json.dumps({"organization": "test-org", "entries": [{"model": "org/m", "method": "wanda"}]}))
    assert load_manifest(as_json).entries[0].line == 1
    with pytest.raises(ValueError, match="unknown manifest key"):
        load_manifest({"organization": "test-org", "model": "x"})
    bad = publish_zoo({"organization": "o", "entries": [{"model": "m", "method": "wanda", "colour": 1}]}, dry_run=True)
    assert bad.entries[0].status == "invalid" and "colour" in bad.entries[0].error


def test_example_manifest_in_the_repository_plans_cleanly():
    manifest = REPO / "model_cards" / "zoo.yaml"
    result = publish_zoo(manifest, dry_run=True)
    assert result.entries and all(e.status == "planned" for e in result.entries)
    assert len({e.repo_id for e in result.entries}) == len(result.entries)


def test_line_containers_do_not_share_their_line_tables(tmp_path: Path):
    """Each mapping / sequence keeps its own line table, also when built without the YAML loader."""
    from optimum_gblm.zoo.manifest import _line, _LineDict, _LineList

    first, second = _LineDict(a=1), _LineDict(b=2)
    first.key_lines["a"] = 3
    assert second.key_lines == {} and first.key_lines is not second.key_lines
    assert _line(second, "a") is None and _line(first, "a") == 3
    items, others = _LineList([1]), _LineList([2])
    items.item_lines.append(7)
    assert others.item_lines == [] and items.item_lines is not others.item_lines
    assert _line(others, 0) is None and _line(items, 0) == 7
    assert first.line is None and items.line is None
    # the loader still records the lines of what it builds
    path = tmp_path / "zoo.yaml"
    path.write_text("organization: test-org\nentries:\n  - model: org/m\n    method: wanda\n")
    (entry,) = load_manifest(path).entries
    assert entry.line == 3 and entry.field_lines == {"model": 3, "method": 4}


def test_entry_without_sparsity_uses_the_default_or_its_pattern(tmp_path: Path):
    text = """\
organization: test-org
evaluation:
  seqlen: 64
entries:
  - model: org/base-model
    method: wanda
  - model: org/base-model
    method: magnitude
    pattern: "1:4"
  - model: org/base-model
    method: flap
    sparsity: 0.3
"""
    path = tmp_path / "zoo.yaml"
    path.write_text(text)
    result = publish_zoo(path, dry_run=True, table_path=tmp_path / "MODEL_ZOO.md")
    assert [(e.status, e.repo_id) for e in result.entries] == [
        ("planned", "test-org/base-model-wanda-unstructured-50"),
        ("planned", "test-org/base-model-magnitude-1of4-25"),
        ("planned", "test-org/base-model-flap-structured-30"),  # a structured method is named for what it does
    ]
    table = (tmp_path / "MODEL_ZOO.md").read_text()
    assert "| `unstructured` | 50.00% |" in table and "| `1:4` | 25.00% |" in table
    assert "| `structured` | 30.00% |" in table and "unstructured` | 30.00%" not in table
    assert "Evaluation asked for: seqlen=64" in table


def test_dry_run_refuses_what_prune_would_refuse(workspace: Path, caplog: pytest.LogCaptureFixture):
    import logging

    text = """\
organization: test-org
defaults:
  device: cpu
models:
  - ./tiny-llama
  - ./missing-model
methods: [magnitude]
patterns:
  - unstructured
  - "2:5"
"""
    path = workspace / "zoo.yaml"
    path.write_text(text)
    caplog.set_level(logging.INFO, logger="optimum_gblm")
    result = publish_zoo(path, dry_run=True)
    by_key = {(Path(e.model).name, e.config["pattern"]): e for e in result.entries}
    assert by_key["tiny-llama", "unstructured"].status == "planned"
    nm = by_key["tiny-llama", "2:5"]  # the tiny model's linears read 64 or 128 features: not divisible by 5
    assert nm.status == "invalid" and nm.line == _line_of(text, '"2:5"') and "divisible by M=5" in nm.error
    for pattern in ("unstructured", "2:5"):
        missing = by_key["missing-model", pattern]
        assert missing.status == "invalid" and missing.line == _line_of(text, "missing-model")
        assert "does not exist" in missing.error
    assert result.summary() == "1 planned, 0 published, 0 skipped, 3 failed"
    assert "Zoo: 1 planned, 0 published, 0 skipped, 3 failed" in caplog.text


def test_method_arguments_in_defaults_go_to_the_methods_that_take_them(tmp_path: Path):
    text = """\
organization: test-org
defaults:
  beta: 0.5
  blocksize: 64
models: [org/base-model]
methods: [wanda, sparsegpt, gblm-obs]
"""
    path = tmp_path / "zoo.yaml"
    path.write_text(text)
    result = publish_zoo(path, dry_run=True)
    assert [e.status for e in result.entries] == ["planned"] * 3, [e.error for e in result.entries]
    given = [{k: e.config[k] for k in ("beta", "blocksize") if k in e.config} for e in load_manifest(path).entries]
    assert given == [{}, {"blocksize": 64}, {"beta": 0.5, "blocksize": 64}]

    path.write_text(text.replace("gblm-obs]", "magnitude]"))  # beta applies to none of the listed methods
    with pytest.raises(ValueError, match=rf"beta.*line {_line_of(text, 'beta')}.*gblm-obs"):
        load_manifest(path)
    own = {"organization": "o", "entries": [{"model": "org/m", "method": "wanda", "beta": 0.5}]}
    assert publish_zoo(own, dry_run=True).entries[0].status == "invalid"  # an entry's own argument stays strict


def test_zoo_checks_the_token_and_namespaces_before_pruning(
    hub: LocalHubServer, workspace: Path, monkeypatch: pytest.MonkeyPatch
):
    text = """\
organization: test-org
entries:
  - model: ./tiny-llama
    method: magnitude
  - model: ./tiny-llama
    method: wanda
    repo: someone-else/tiny-wanda
"""
    manifest = workspace / "zoo.yaml"
    manifest.write_text(text)

    def no_pruning(*args, **kwargs):
        raise AssertionError("pruned although the token cannot push")

    monkeypatch.setattr(GBLMPruner, "from_pretrained", no_pruning)
    wrong = publish_zoo(manifest, token="hf_wrong", endpoint=hub.endpoint, evaluate=False)
    assert [e.status for e in wrong.entries] == ["invalid", "invalid"]
    assert all("HTTP 401" in e.error and "hf auth login" in e.error for e in wrong.entries)
    result = publish_zoo(manifest, token=TOKEN, endpoint=hub.endpoint, evaluate=False)
    foreign = result.entries[1]
    assert foreign.status == "invalid" and foreign.line == _line_of(text, "repo: someone-else")
    assert "cannot write to 'someone-else'" in foreign.error
    assert result.entries[0].status == "failed" and "pruned although" in result.entries[0].error
    assert not any(path == "/api/repos/create" for _, path, _ in hub.requests)
