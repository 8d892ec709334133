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

# The full description (every registered method and model kind) comes from the registries when `gblm` runs.
DESCRIPTION = "Prune LLMs and ViTs with GBLM-Pruner and the other registered methods."

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
    COMMAND = CommandInfo(name="gblm", help=DESCRIPTION)

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
        if _invoked(GBLMCommand.COMMAND.name):  # only then may the registries (torch) be imported
            from optimum_gblm.commands.overview import cli_description

            parser.description = cli_description()
        else:
            parser.description = DESCRIPTION
        parser.epilog = EPILOG
        parser.formatter_class = RawDescriptionHelpFormatter


REGISTER_COMMANDS = [GBLMCommand]
