"""Registers `optimum-cli gblm`.

optimum imports every module in this namespace on each CLI call (`optimum-cli export ...` included), so this
module imports only optimum's light base classes. The subcommands' options are generated from GBLMConfig and the
method registry, which import torch: they are attached only when `gblm` is the command being run.
"""

from __future__ import annotations

import sys
from argparse import ArgumentParser, RawDescriptionHelpFormatter
from typing import TYPE_CHECKING

from optimum.commands.base import BaseOptimumCLICommand, CommandInfo

if TYPE_CHECKING:
    from argparse import Namespace, _SubParsersAction

DESCRIPTION = """\
Prune LLaMA-family LLMs (llama, mistral, qwen2, qwen3) and timm ViTs with GBLM-Pruner (gradients + activations),
Wanda, SparseGPT, gblm-obs or magnitude, unstructured or N:M, and save checkpoints that plain transformers / timm
reload. Without --model, the embedded SmolLM2-135M-Instruct and offline corpus are used (no network)."""

EPILOG = """\
examples:
  optimum-cli gblm prune --output smollm2-gblm-50 --eval
  optimum-cli gblm prune --model ./my-llama --method wanda --pattern 2:4 --output my-llama-2-4
  optimum-cli gblm gradients --output grads.safetensors
  optimum-cli gblm evaluate smollm2-gblm-50
  optimum-cli gblm push smollm2-gblm-50 my-user/smollm2-gblm-50
  optimum-cli gblm recover smollm2-gblm-50 --output smollm2-gblm-50-perp --eval
  optimum-cli gblm prune --help     (every option, with defaults)"""


def _invoked(name: str) -> bool:
    """Whether `name` is the command on this command line (the root parser has no options taking values)."""
    positional = [arg for arg in sys.argv[1:] if not arg.startswith("-")]
    return bool(positional) and positional[0] == name


class GBLMCommand(BaseOptimumCLICommand):
    COMMAND = CommandInfo(name="gblm", help="Prune LLMs and ViTs with GBLM-Pruner, Wanda, SparseGPT, magnitude.")

    def __init__(
        self,
        subparsers: _SubParsersAction | None,
        args: Namespace | None = None,
        command: CommandInfo | None = None,
        from_defaults_factory: bool = False,
        parser: ArgumentParser | None = None,
    ) -> None:
        super().__init__(subparsers, args, command=command, from_defaults_factory=from_defaults_factory, parser=parser)
        if not from_defaults_factory and _invoked(self.COMMAND.name):
            from optimum_gblm.commands import SUBCOMMANDS

            for info in SUBCOMMANDS:
                self.register_subcommand(info)

    @staticmethod
    def parse_args(parser: ArgumentParser) -> None:
        parser.description = DESCRIPTION
        parser.epilog = EPILOG
        parser.formatter_class = RawDescriptionHelpFormatter


REGISTER_COMMANDS = [GBLMCommand]
