"""Calibration sources: offline corpus split, text files, datasets files, tensors; seeding; evaluation protocol."""

import json
import re

import pytest
import torch

from optimum_gblm.data.text import (
    EVAL_EXTRACTS,
    TokenCalibration,
    build_token_calibration,
    corpus_extracts,
    corpus_text,
    sample_documents,
    sample_windows,
)
from optimum_gblm.evaluation import perplexity


class CharTokenizer:
    """Deterministic stand-in tokenizer: one id per character."""

    def __call__(self, text, return_attention_mask=False):
        return {"input_ids": [ord(c) % 256 for c in text]}


def test_windows_are_seeded_and_in_range():
    stream = torch.arange(1000)
    a, b, c = sample_windows(stream, 8, 32, 0), sample_windows(stream, 8, 32, 0), sample_windows(stream, 8, 32, 1)
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert a.shape == (8, 32) and ((a[:, 1:] - a[:, :-1]) == 1).all()


def test_too_short_text_is_rejected_with_sizes():
    with pytest.raises(ValueError, match="too short: 10 tokens, but one window needs more than seqlen=32"):
        sample_windows(torch.arange(10), 1, 32, 0)
    with pytest.raises(ValueError, match="no document has more than seqlen=8"):
        sample_documents([torch.arange(5)], 1, 8, 0)


def test_document_sampling_stays_inside_one_document():
    docs = [torch.full((20,), i) for i in range(3)] + [torch.full((4,), 9)]
    windows = sample_documents(docs, 10, 8, 0)
    assert all(len(set(w.tolist())) == 1 and w[0] != 9 for w in windows)


def test_offline_corpus_split_is_disjoint():
    extracts = corpus_extracts()
    assert len(extracts) > 9000
    calib, evaluation = corpus_text("calibration"), corpus_text("evaluation")
    assert evaluation.startswith(extracts[-EVAL_EXTRACTS]) and calib.endswith(extracts[-EVAL_EXTRACTS - 1])
    held_out = set(extracts[-EVAL_EXTRACTS:]) - set(extracts[:-EVAL_EXTRACTS])
    assert not any(text in calib for text in list(held_out)[:50])


def test_text_file_and_datasets_file_sources(tmp_path):
    text = "The quick brown fox jumps over the lazy dog. " * 20
    path = tmp_path / "calib.txt"
    path.write_text(text)
    calib = build_token_calibration(CharTokenizer(), str(path), 4, 16, seed=3)
    assert isinstance(calib, TokenCalibration) and calib.input_ids.shape == (4, 16)
    jsonl = tmp_path / "calib.jsonl"
    jsonl.write_text("\n".join(json.dumps({"content": text[i : i + 200]}) for i in range(0, 800, 200)))
    calib2 = build_token_calibration(CharTokenizer(), str(jsonl), 2, 16, text_column="content")
    assert calib2.input_ids.shape == (2, 16)
    with pytest.raises(ValueError, match="no column 'text'"):
        build_token_calibration(CharTokenizer(), str(jsonl), 2, 16)


def test_token_calibration_validation():
    with pytest.raises(ValueError, match="2-D"):
        TokenCalibration(torch.arange(5))
    with pytest.raises(ValueError, match="integer token ids"):
        TokenCalibration(torch.rand(2, 4))
    calib = TokenCalibration(torch.ones(3, 4, dtype=torch.long))
    assert len(calib) == 3 and calib[1].shape == (1, 4) and len(list(calib)) == 3


def test_perplexity_protocol_non_overlapping_windows_remainder_dropped(tiny_llama):
    stream = torch.randint(0, 128, (70,))
    windows = []
    hook = tiny_llama.register_forward_pre_hook(
        lambda m, a, k: windows.append(k["input_ids"].clone()), with_kwargs=True
    )
    value = perplexity(tiny_llama, stream, 16, progress=False)
    hook.remove()
    assert len(windows) == 4 and torch.equal(torch.cat(windows, 1)[0], stream[:64])
    with torch.no_grad():
        nll = [float(tiny_llama(input_ids=w, labels=w).loss) for w in windows]
    assert value == pytest.approx(torch.tensor(nll).mean().exp().item(), rel=1e-6)


# -- GBLMPruner.evaluate: explicit arguments, a bounded default, every setting recorded ----------------------------
def _text_pruner(tmp_path):
    from optimum_gblm import GBLMConfig, GBLMPruner
    from tests.conftest import tiny_model
    from tests.helpers.tiny_models import tiny_tokenizer, write_text

    config = GBLMConfig(method="magnitude", seqlen=16, device="cpu")
    return GBLMPruner(tiny_model("llama"), config, tokenizer=tiny_tokenizer()), str(write_text(tmp_path / "e.txt"))


def _count_windows(model):
    seen = []
    model.register_forward_pre_hook(lambda m, a, k: seen.append(tuple(k["input_ids"].shape)), with_kwargs=True)
    return seen


def test_evaluate_shows_its_arguments_and_names_the_right_one_for_a_wrong_one(tmp_path):
    import inspect
    import pydoc

    from optimum_gblm import GBLMPruner

    params = inspect.signature(GBLMPruner.evaluate).parameters
    text_args, image_args = (
        {"source", "seqlen", "max_windows", "progress"},
        {"images", "labels", "split", "batch_size"},
    )
    assert {"label"} | text_args | image_args <= set(params)
    assert not any(p.kind is p.VAR_KEYWORD for p in params.values())
    assert params["max_windows"].default == 40
    shown = pydoc.render_doc(GBLMPruner.evaluate)  # what help() prints
    assert "max_windows" in shown and "**kwargs" not in shown and "40" in shown
    pruner, text = _text_pruner(tmp_path)
    seen = _count_windows(pruner.model)
    for wrong in ("windows", "eval_windows"):
        with pytest.raises(TypeError, match=rf"{wrong}.*max_windows="):
            pruner.evaluate(source=text, progress=False, **{wrong: 3})
    with pytest.raises(TypeError, match="images=, labels= do not apply .* perplexity, which takes source, seqlen"):
        pruner.evaluate(source=text, images=torch.zeros(1, 3, 8, 8), labels=torch.zeros(1))
    assert seen == [] and pruner.results == {}  # refused before any forward pass


def test_evaluate_uses_a_bounded_default_and_records_every_setting(tmp_path, caplog):
    import logging

    pruner, text = _text_pruner(tmp_path)
    seen = _count_windows(pruner.model)
    caplog.set_level(logging.INFO, logger="optimum_gblm")
    pruner.evaluate(source=text, progress=False)
    assert seen == [(1, 16)] * 40  # the config's seqlen, 40 windows
    assert pruner.evaluation["dense"] == {"source": text, "seqlen": 16, "max_windows": 40, "windows": 40}
    available = int(re.search(r"40 of (\d+) windows", caplog.text).group(1))
    assert available > 40 and "max_windows=None" in caplog.text  # the log says how to evaluate all of them

    seen.clear()
    pruner.evaluate("all", source=text, seqlen=128, max_windows=None, progress=False)
    assert seen == [(1, 128)] * (available // 8)  # every window of the text
    assert pruner.evaluation["all"] == {"source": text, "seqlen": 128, "max_windows": None, "windows": len(seen)}
    pruner.evaluate("corpus", max_windows=2, progress=False)
    assert pruner.evaluation["corpus"] == {"source": "offline-corpus", "seqlen": 16, "max_windows": 2, "windows": 2}
    assert set(pruner.results) == {"dense_perplexity", "all_perplexity", "corpus_perplexity"}
