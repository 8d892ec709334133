"""Golden parity: every method x pattern x allocation gives the masks and weights recorded before the redesign.

The hashes in `tests/golden/parity_hashes.json` were written by `python tests/helpers/golden_parity.py` with the code as it
was before the architecture change; any change of a mask or of a single weight bit fails here.
"""

from __future__ import annotations

import json

import pytest
import torch

from optimum_gblm import list_methods
from optimum_gblm.methods import get_method
from tests.helpers.golden_parity import (
    GOLDEN,
    STRUCTURED,
    SUITES,
    case_key,
    cases,
    compute,
    compute_structured,
    structured_cases,
    structured_key,
)

UNSTRUCTURED = [m for m in list_methods() if not get_method(m).structured]
STRUCTURED_METHODS = [m for m in list_methods() if get_method(m).structured]

DATA = json.loads(GOLDEN.read_text())
RECORDED_TORCH = DATA["torch"].split("+")[0].rsplit(".", 1)[0]


def _params(suite: str) -> list:
    marks = [pytest.mark.slow] if suite == "smollm2" else []
    return [pytest.param(suite, case, id=f"{suite}:{case_key(case)}", marks=marks) for case in cases(UNSTRUCTURED)]


def test_every_registered_method_was_recorded():
    """A method registered after the recording has no golden hashes: it must be covered by its own tests."""
    recorded = {entry["case"]["method"] for entry in DATA["tiny-llama"].values()}
    assert recorded <= set(list_methods())


@pytest.mark.skipif(
    torch.__version__.split("+")[0].rsplit(".", 1)[0] != RECORDED_TORCH,
    reason=f"hashes were recorded with torch {DATA['torch']}; float kernels may differ in torch {torch.__version__}",
)
@pytest.mark.parametrize(
    ("suite", "case"),
    [p for suite in SUITES for p in _params(suite) if case_key(p.values[1]) in DATA.get(suite, {})],
)
def test_masks_and_weights_match_the_recording(suite, case):
    expected = DATA[suite][case_key(case)]
    got = compute(suite, case)
    assert got["layers"].keys() == expected["layers"].keys()
    differing = [name for name in expected["layers"] if got["layers"][name] != expected["layers"][name]]
    assert not differing, f"masks changed in {differing[:5]}"
    assert got["masks"] == expected["masks"]
    assert got["weights"] == expected["weights"], "same masks, but the kept weights changed"


@pytest.mark.skipif(
    torch.__version__.split("+")[0].rsplit(".", 1)[0] != RECORDED_TORCH,
    reason=f"hashes were recorded with torch {DATA['torch']}; float kernels may differ in torch {torch.__version__}",
)
@pytest.mark.parametrize(
    "case",
    [c for c in structured_cases(STRUCTURED_METHODS) if structured_key(c) in DATA.get(STRUCTURED, {})],
    ids=structured_key,
)
def test_structured_weights_and_shapes_match_the_recording(case):
    expected = DATA[STRUCTURED][structured_key(case)]
    got = compute_structured(case)
    assert got["shapes"] == expected["shapes"], "other widths were kept"
    assert got["kept"] == expected["kept"], "other heads / channels were kept"
    assert got["weights"] == expected["weights"], "same structure, but the weights changed"


def test_every_structured_method_was_recorded():
    """Every structured method known when the hashes were recorded is still registered (and recorded)."""
    recorded = {entry["case"]["method"] for entry in DATA[STRUCTURED].values()}
    assert recorded and recorded <= set(list_methods())
