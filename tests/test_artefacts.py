"""Saved and published artefacts tell the truth: a corrupt side-car is named and refused."""

from __future__ import annotations

from pathlib import Path

import pytest

from optimum_gblm import GBLMConfig
from optimum_gblm.publishing.sidecar import read_sidecar


# -- 3. a corrupt side-car is named, never silently ignored ----------------------------------------------------------
@pytest.mark.parametrize(
    "content, problem",
    [
        ('{"format": "optimum-gblm/2", "config": {"method": "wanda"', "not valid JSON"),
        ("[1, 2]", "a JSON object"),
        ('{"format": "optimum-gblm/2", "pruning_map": null}', "config"),
        ('{"format": "optimum-gblm/9", "config": {}}', "format"),
    ],
)
def test_read_sidecar_names_the_file_and_the_problem(tmp_path: Path, content: str, problem: str):
    (tmp_path / "gblm_config.json").write_text(content)
    with pytest.raises(ValueError) as err:
        read_sidecar(tmp_path)
    assert str(tmp_path / "gblm_config.json") in str(err.value) and problem in str(err.value)
    if problem in ("not valid JSON", "a JSON object"):  # the config reader of the card's snippet names it too
        with pytest.raises(ValueError, match="gblm_config.json"):
            GBLMConfig.from_pretrained(tmp_path)


def test_a_config_only_file_reads_as_an_unpruned_sidecar(tmp_path: Path):
    GBLMConfig(method="wanda", seqlen=64).save_pretrained(tmp_path)  # no format, no pruning map: not corrupt
    sidecar = read_sidecar(tmp_path)
    assert sidecar["config"]["seqlen"] == 64 and sidecar.get("pruning_map") is None
