"""What the CLI's help says about methods and models, generated from the registries: a method registered with
`register_method`, a family added to `DECODER_FAMILIES` or a new adapter appears without editing any help text."""

from __future__ import annotations

import textwrap

from ..adapters.families import DECODER_FAMILIES
from ..adapters.registry import list_adapters
from ..methods import get_method, list_methods

WIDTH = 116  # the help's line length (the top-level help is printed as written)


def method_names(structured: bool | None = None) -> list[str]:
    """Registered methods in registration order; `structured` keeps one kind only."""
    return [n for n in list_methods() if structured is None or get_method(n).structured == structured]


def decoder_families() -> str:
    """The decoder families with known defaults or exceptions (docs/families.md), by `model_type`."""
    return ", ".join(DECODER_FAMILIES)


def other_architectures() -> list[str]:
    """What the adapters outside transformers' causal LMs prune (timm ViTs), in their own words."""
    return [name for cls in list_adapters() if cls.library != "transformers" for name in cls.architectures()]


def model_help() -> str:
    """The `--model` option's help."""
    return (
        "Model folder or Hub id: a transformers causal LM (any whose decoder layers can be found; families with "
        f"known defaults: {decoder_families()}; docs/families.md) or {' / '.join(other_architectures())} "
        "(default: the embedded SmolLM2-135M-Instruct, with the embedded offline corpus)."
    )


def prune_help() -> str:
    """The `prune` subcommand's one-line help."""
    return f"Prune a model with one of {len(list_methods())} methods: {', '.join(list_methods())}."


def _paragraph(label: str, text: str) -> str:
    return textwrap.fill(text, WIDTH, initial_indent=f"{label:<11}", subsequent_indent=" " * 11)


def cli_description() -> str:
    """`optimum-cli gblm --help`'s description: what it does, every registered method by kind, every model kind."""
    kinds = [
        ("unstructured or N:M", method_names(structured=False)),
        ("structured, whole heads / channels removed", method_names(structured=True)),
    ]
    methods = "; ".join(f"{', '.join(names)} ({kind})" for kind, names in kinds if names)
    models = (
        f"transformers causal LMs ({decoder_families()}, and any other whose decoder layers can be found: "
        f"docs/families.md); {'; '.join(other_architectures())}"
    )
    intro = (
        "Prune LLMs and ViTs with GBLM-Pruner (gradients + activations) or another registered method, and save "
        "checkpoints that plain transformers / timm reload. Without --model, the embedded SmolLM2-135M-Instruct "
        "and offline corpus are used (no network)."
    )
    return "\n".join([textwrap.fill(intro, WIDTH), "", _paragraph("methods:", methods), _paragraph("models:", models)])
