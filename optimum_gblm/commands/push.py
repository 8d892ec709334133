"""`optimum-cli gblm push`: publish a saved checkpoint folder to the Hub."""

from __future__ import annotations

import argparse
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from optimum.commands.base import CommandInfo

from .base import GBLMSubcommand
from .errors import CommandFailed, UsageError, usage_error
from .options import add_hub_arguments

logger = logging.getLogger(__name__)


def load_push_folder(repo_id: str, args: argparse.Namespace) -> Callable[..., Any]:
    """Check the repo id, then that the token may write there (one `whoami`, nothing created), and hand back
    `push_folder` (imported on use: the hub module pulls in the Hub client). `prune` calls this before loading the
    model, so a wrong token or namespace fails in a second, not after the prune."""
    from huggingface_hub import constants

    from ..publishing.hub import HubPublishError, check_repo_id, check_write_access, push_folder

    if constants.HF_HUB_OFFLINE:
        raise UsageError("pushing needs the network, but HF_HUB_OFFLINE is set: unset it (or set HF_HUB_OFFLINE=0)")
    try:
        check_repo_id(repo_id)
    except ValueError as err:
        raise UsageError(str(err)) from None
    try:
        check_write_access(repo_id, token=args.token, endpoint=args.endpoint)
    except HubPublishError as err:
        raise CommandFailed(str(err)) from err
    return push_folder


def hub_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "token": args.token,
        "private": args.private,
        "commit_message": args.commit_message,
        "revision": args.revision,
        "endpoint": args.endpoint,
    }


def check_folder(path: str, allow_dense: bool = False) -> Path:
    """A checkpoint folder with a valid side-car that holds a pruning map (unless --allow-dense) and a valid card."""
    from ..publishing.hub import check_checkpoint_folder

    try:
        return check_checkpoint_folder(Path(path).expanduser(), allow_dense)
    except (FileNotFoundError, ValueError) as err:
        raise usage_error(err) from None


class PushCommand(GBLMSubcommand):
    COMMAND = CommandInfo(name="push", help="Publish a saved (pruned) checkpoint folder to the Hugging Face Hub.")
    DESCRIPTION = (
        "Upload a folder written by `optimum-cli gblm prune` (or GBLMPruner.save_pretrained) to a Hub model repo,\n"
        "creating the repo when needed. The folder is uploaded as is (weights, side-car and model card), except\n"
        "that a generated card and its side-car are uploaded naming the repo (the local folder is not modified).\n"
        "A folder saved without being pruned (no pruning map) is refused unless --allow-dense."
    )
    EXAMPLES = (
        "  optimum-cli gblm push smollm2-gblm-50 my-user/smollm2-135m-gblm-50 --private\n"
        "  optimum-cli gblm push out my-org/model --endpoint http://127.0.0.1:8080 --token hf_xxx"
    )

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("folder", help="Checkpoint folder to upload.")
        parser.add_argument("repo_id", help="Target Hub repo, e.g. my-user/my-pruned-model.")
        parser.add_argument(
            "--allow-dense",
            action="store_true",
            help="Publish a folder saved without being pruned (GBLMPruner.save_pretrained(..., allow_dense=True)).",
        )
        add_hub_arguments(parser.add_argument_group("hub"))

    def execute(self) -> None:
        folder = check_folder(self.args.folder, self.args.allow_dense)
        push_folder = load_push_folder(self.args.repo_id, self.args)
        result = push_folder(folder, self.args.repo_id, allow_dense=self.args.allow_dense, **hub_kwargs(self.args))
        print(f"Pushed {folder} to {self.args.repo_id}: {result}")
