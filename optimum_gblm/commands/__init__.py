"""`optimum-cli gblm` subcommands: a thin layer over the Python API (registered by optimum/commands/register)."""

from __future__ import annotations

from optimum.commands.base import CommandInfo

from .errors import CommandFailed, UsageError
from .evaluate import EvaluateCommand
from .gradients import GradientsCommand
from .plan import PlanCommand
from .prune import PruneCommand
from .push import PushCommand
from .recover import RecoverCommand
from .zoo import ZooCommand

COMMANDS = (PruneCommand, GradientsCommand, EvaluateCommand, PushCommand, ZooCommand, PlanCommand, RecoverCommand)
SUBCOMMANDS: tuple[CommandInfo, ...] = tuple(
    CommandInfo(name=c.COMMAND.name, help=c.COMMAND.help, subcommand_class=c) for c in COMMANDS
)

__all__ = [
    "COMMANDS",
    "CommandFailed",
    "EvaluateCommand",
    "GradientsCommand",
    "PlanCommand",
    "PruneCommand",
    "PushCommand",
    "RecoverCommand",
    "SUBCOMMANDS",
    "UsageError",
    "ZooCommand",
]
