"""Errors the subcommands raise on purpose; `GBLMSubcommand.run` turns them into one line and an exit code."""

from __future__ import annotations

from ..fields import CLI, OptionMessage


class UsageError(Exception):
    """Bad input found before any heavy work: exit code 2, like an argparse error."""


class CommandFailed(Exception):
    """A failure already explained by the log (e.g. some zoo entries failed): exit code 1, no traceback hint."""


def cli_message(err: BaseException) -> str:
    """A library error's message worded for the command line: an error that names its option (`OptionError`)
    spells it as a flag (`--device 'cuda'`, `pass --overwrite`); any other keeps its message."""
    return err.render(CLI) if isinstance(err, OptionMessage) else str(err)


def usage_error(err: Exception) -> UsageError:
    """A library error as a usage error, worded for the command line (`cli_message`)."""
    return UsageError(cli_message(err))
