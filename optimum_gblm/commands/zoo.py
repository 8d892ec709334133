"""`optimum-cli gblm zoo`: prune, evaluate and publish every entry of a model-zoo manifest."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any

from optimum.commands.base import CommandInfo

from .base import GBLMSubcommand, check_eval_source
from .errors import CommandFailed, UsageError
from .options import DEFAULT_EVAL_WINDOWS, add_eval_arguments, max_windows_kwargs

logger = logging.getLogger(__name__)


def zoo_eval_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    """Only the evaluation options given on the command line: they override the manifest's `evaluation:`."""
    given = {"seqlen": args.eval_seqlen, "source": args.eval_source}
    return {**{k: v for k, v in given.items() if v is not None}, **max_windows_kwargs(args)}


class ZooCommand(GBLMSubcommand):
    COMMAND = CommandInfo(name="zoo", help="Publish the model zoo described by a manifest.")
    DESCRIPTION = (
        "Read a model-zoo manifest (see model_cards/zoo.yaml), prune and evaluate every listed checkpoint, push\n"
        "each to its Hub repo, add them to the collection and write the zoo table. Entries already published\n"
        "with the same config are skipped, so an interrupted run is simply started again. A failing entry is\n"
        "reported with its manifest line; the others still go ahead (exit code 1 if any failed)."
    )
    EXAMPLES = (
        "  optimum-cli gblm zoo model_cards/zoo.yaml --dry-run\n"
        "  optimum-cli gblm zoo model_cards/zoo.yaml --work-dir zoo-work --token hf_xxx"
    )

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("manifest", help="Model-zoo manifest (YAML or JSON).")
        group = parser.add_argument_group("zoo")
        group.add_argument(
            "--work-dir", metavar="DIR", help="Keep the checkpoints here (default: a temporary folder)."
        )
        group.add_argument(
            "--table", metavar="PATH", help="Write the markdown zoo table here (default: WORK_DIR/MODEL_ZOO.md)."
        )
        group.add_argument("--no-evaluate", action="store_true", help="Skip dense / pruned evaluation.")
        group.add_argument("--dry-run", action="store_true", help="Validate and plan only: no pruning, no Hub access.")
        group.add_argument("--token", help="Hub token (default: HF_TOKEN or the token saved by `hf auth login`).")
        group.add_argument(
            "--endpoint", metavar="URL", help="Hub endpoint (default: huggingface_hub's, i.e. HF_ENDPOINT)."
        )
        add_eval_arguments(
            parser,
            "evaluation (overrides the manifest's)",
            "the manifest's",
            flag=False,
            source_default=None,
            windows_default=f"the manifest's, else {DEFAULT_EVAL_WINDOWS}",
        )

    def execute(self) -> None:
        args = self.args
        import yaml
        from huggingface_hub import constants

        from ..zoo import load_manifest, publish_zoo  # imported on use: the Hub client and the pruner

        path = Path(args.manifest).expanduser()
        if not path.is_file():
            raise UsageError(f"manifest {args.manifest!r} does not exist")
        try:
            manifest = load_manifest(path)
        except (ValueError, OSError, yaml.YAMLError) as err:
            raise UsageError(f"manifest {args.manifest} is invalid: {err}") from None
        if args.eval_source is not None:
            check_eval_source(args.eval_source)
        if not args.dry_run and constants.HF_HUB_OFFLINE:
            raise UsageError("publishing needs the network, but HF_HUB_OFFLINE is set: unset it, or use --dry-run")

        result = publish_zoo(
            manifest,
            token=args.token,
            endpoint=args.endpoint,
            work_dir=args.work_dir,
            evaluate=not args.no_evaluate,
            eval_kwargs=zoo_eval_kwargs(args),
            dry_run=args.dry_run,
            table_path=args.table,
            progress=self.progress,
        )
        for entry in result.entries:
            where = f"line {entry.line}" if entry.line else "manifest"
            detail = entry.error or entry.commit or ""
            print(f"{entry.status:<9} {entry.repo_id or entry.model}  ({where}){'  ' + detail if detail else ''}")
        for problem in result.errors:
            print(f"warning: {problem}")
        if result.collection_slug:
            print(f"collection: {result.collection_slug}")
        if result.table_path:
            print(f"table: {result.table_path}")
        print(f"zoo: {result.summary()}{' (dry run)' if args.dry_run else ''}")
        if result.failed:
            raise CommandFailed(f"{len(result.failed)} of {len(result.entries)} zoo entries failed (listed above)")
