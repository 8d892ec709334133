"""Errors the subcommands raise on purpose; `GBLMSubcommand.run` turns them into one line and an exit code."""

from __future__ import annotations


class UsageError(Exception):
    """Bad input found before any heavy work: exit code 2, like an argparse error."""


class CommandFailed(Exception):
    """A failure already explained by the log (e.g. some zoo entries failed): exit code 1, no traceback hint."""
