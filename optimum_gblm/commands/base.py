"""Base of the `optimum-cli gblm` subcommands: help layout, logging, exit codes, and checks before heavy work."""

from __future__ import annotations

import argparse
import logging
import sys
import traceback
from pathlib import Path
from typing import Any, ClassVar

from optimum.commands.base import BaseOptimumCLICommand

from ..utils import looks_like_local_path
from .errors import CommandFailed, UsageError, cli_message, usage_error
from .options import EVAL_SOURCES, add_logging_arguments

logger = logging.getLogger(__name__)

EXIT_RUNTIME, EXIT_USAGE, EXIT_INTERRUPTED = 1, 2, 130


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Keep the hand-made line breaks of descriptions and example epilogs."""

    def __init__(self, prog: str) -> None:
        super().__init__(prog, max_help_position=36)


class GBLMSubcommand(BaseOptimumCLICommand):
    """A subcommand: `add_arguments` declares its options, `execute` does the work; `run` maps errors to exit codes."""

    DESCRIPTION: ClassVar[str] = ""
    EXAMPLES: ClassVar[str] = ""

    @classmethod
    def parse_args(cls, parser: argparse.ArgumentParser) -> None:
        # optimum creates the parser with only `help=`: fill in what `--help` shows here.
        parser.description = cls.DESCRIPTION
        parser.epilog = cls.epilog()
        parser.formatter_class = HelpFormatter
        cls.add_arguments(parser)
        add_logging_arguments(parser)

    @classmethod
    def epilog(cls) -> str:
        return f"examples:\n{cls.EXAMPLES}" if cls.EXAMPLES else ""

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        raise NotImplementedError

    def execute(self) -> None:
        raise NotImplementedError

    @property
    def progress(self) -> bool:
        return not self.args.no_progress

    def run(self) -> None:
        setup_logging(self.args.log_level, self.args.debug)
        if not self.progress:
            import transformers

            transformers.utils.logging.disable_progress_bar()
        try:
            self.execute()
        except UsageError as err:
            self._fail(EXIT_USAGE, str(err))
        except CommandFailed as err:
            self._fail(EXIT_RUNTIME, str(err))
        except KeyboardInterrupt:
            self._fail(EXIT_INTERRUPTED, "interrupted")
        except Exception as err:  # the CLI boundary: one line, or the full traceback with --debug
            if self.args.debug:
                traceback.print_exc()
            hint = "" if self.args.debug else " (rerun with --debug for the traceback)"
            self._fail(EXIT_RUNTIME, f"{type(err).__name__}: {cli_message(err)}{hint}")

    def _fail(self, code: int, message: str) -> None:
        print(f"{self.parser.prog}: error: {' '.join(message.split())}", file=sys.stderr)
        sys.exit(code)


def setup_logging(level: str, debug: bool = False) -> None:
    """Handlers are the CLI's job (the library never sets any): timestamps on stderr, library at `level`."""
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    logging.getLogger("optimum_gblm").setLevel(logging.DEBUG if debug else level.upper())
    logging.captureWarnings(True)


# -- the model a subcommand works on ---------------------------------------------------------------------------
# Settings of where and how a prune walks the model: commands that only load and run it (evaluate, recover) do not
# offer them.
PRUNE_ONLY_OPTIONS = frozenset({"pipeline", "intermediates", "placement"})


def add_model_arguments(parser: argparse.ArgumentParser, what: str) -> None:
    """The model as `MODEL` (positional) or `--model MODEL`, like `prune --model`; `chosen_model` reads them."""
    parser.add_argument("model", nargs="?", metavar="MODEL", help=f"{what} (or --model MODEL).")
    parser.add_argument("--model", dest="model_option", metavar="MODEL", help="The same as the positional MODEL.")


def chosen_model(args: argparse.Namespace) -> str:
    """The one model given (positional or --model; both only when they name the same), stored in `args.model`."""
    positional, option = args.model, args.model_option
    if positional is not None and option is not None and not _same_model(positional, option):
        raise UsageError(f"two models given, {positional!r} and --model {option!r}: give one")
    model = positional if positional is not None else option
    if model is None:
        raise UsageError("no model given: pass MODEL or --model MODEL (a checkpoint folder or a Hub id)")
    args.model = model
    return model


def _same_model(a: str, b: str) -> bool:
    if a == b:
        return True
    pa, pb = Path(a).expanduser(), Path(b).expanduser()
    return pa.exists() and pb.exists() and pa.resolve() == pb.resolve()


# -- checks that run before loading anything ---------------------------------------------------------------------
def check_model_path(model: str | None) -> None:
    if model is not None and looks_like_local_path(model) and not Path(model).expanduser().exists():
        raise UsageError(
            f"model path {model!r} does not exist: pass a model folder, a Hub id (org/name), "
            "or omit --model for the embedded SmolLM2-135M"
        )
    if model is not None and Path(model).expanduser().is_file():
        raise UsageError(
            f"--model {model!r} is a file: a model is a folder (config.json and weights), a Hub id (org/name) or a "
            f"timm name (timm/<name>); pass its folder ({Path(model).parent.as_posix() or '.'})"
        )


def check_model_folder(model: str | None) -> None:
    """A local folder that holds no model (no config.json, or one without model_type): a usage error, the last
    check before the model is loaded (the other input checks come first, so they are never hidden by it)."""
    if model is None or not Path(model).expanduser().is_dir():
        return
    from ..adapters.pruned_checkpoint import read_config_dict

    try:
        read_config_dict(model)
    except ValueError as err:
        raise UsageError(
            f"{err}; a model is a folder with config.json and weights (saved by `prune`, `recover` or "
            "save_pretrained), a Hub id (org/name) or a timm name (timm/<name>)"
        ) from None


def check_calibration_source(source: str, model: str | None = None) -> None:
    """A --calibration that can only be a local path must exist (else `datasets` would look it up on the Hub), and
    an image --model needs images, not the text default."""
    from ..configuration import CALIBRATION_PRESETS
    from ..utils import check_calibration_source as check

    try:
        check(source, name="--calibration ")
    except FileNotFoundError as err:
        raise UsageError(str(err)) from None
    if image_model(model) and (source in CALIBRATION_PRESETS or Path(source).suffix.lower() in (".txt", ".md")):
        raise UsageError(
            f"--calibration is {source}, a text source (the LLM default), but --model {model} is an image model: "
            "pass --calibration IMAGE_FOLDER (one sub-folder per class, optionally under train/) or a datasets "
            "image dataset"
        )


def check_device(device: str) -> None:
    """A --device this machine does not have is a usage error before anything is loaded."""
    from ..utils import resolve_device

    try:
        resolve_device(device)
    except ValueError as err:
        raise usage_error(err) from None


def image_metric(model: str | None) -> str | None:
    """The metric of --model when it is not measured on text (an image model), else None; told from its name or
    local config.json alone, nothing loaded."""
    if model is None:
        return None  # the embedded SmolLM2
    from ..adapters.registry import adapter_for_source
    from ..evaluation import find_metric

    name = adapter_for_source(model).metric_name
    metric = find_metric(name)
    return None if metric is not None and metric.inputs == "text" else name


def image_model(model: str | None) -> bool:
    """Whether --model names an image model (told from its name or local config.json alone, nothing loaded)."""
    return image_metric(model) is not None


def check_base_model(base_model: str | None) -> str | None:
    from ..publishing.provenance import check_base_model as check

    try:
        return check(base_model) if base_model else None
    except ValueError as err:
        raise usage_error(err) from None


def check_eval_source(source: str | None, model: str | None = None) -> None:
    """Text presets, an existing file or folder, or (image models) a dataset id; a missing local path is an error,
    and so is a text preset for an image --model (told from its name or config.json, before loading)."""
    if (
        source is not None
        and source not in EVAL_SOURCES
        and looks_like_local_path(source)
        and not Path(source).expanduser().exists()
    ):
        raise UsageError(
            f"--eval-source {source!r} does not exist: use {', '.join(EVAL_SOURCES)}, a text file, "
            "or (image models) an image folder or dataset"
        )
    metric = image_metric(model)
    if metric is not None:
        check_image_eval_source(source, metric)


def check_image_eval_source(source: str | None, metric: str) -> None:
    """An image model is evaluated on labelled images: the text presets (the --eval-source default) do not apply."""
    if source is None or source in EVAL_SOURCES:
        given = "no --eval-source was given" if source is None else f"--eval-source is {source}, a text source"
        raise UsageError(
            f"this is an image model, evaluated by top-1 {metric} on labelled images, but {given} (the LLM "
            "default): pass --eval-source IMAGE_FOLDER (one sub-folder per class, optionally under validation/ or "
            "val/) or a datasets image dataset"
        )


def check_output_folder(path: str, overwrite: bool) -> Path:
    from ..publishing.checkpoint import check_output_dir

    try:
        return check_output_dir(path, overwrite=overwrite)
    except (FileExistsError, PermissionError) as err:
        raise usage_error(err) from None


def check_gradient_cache(path: Path, config: Any, advice: str) -> None:
    """An existing gradient cache must be readable and made with this run's settings (those the cache recorded),
    checked before the model is loaded; `advice` says what to do instead. The file is never modified here."""
    if not path.exists():
        return
    from ..gradients import GradientCacheError, required_norms
    from ..gradients.cache import calibration_settings, check_cache_settings, config_source

    settings = {
        "scale": config.gradient_scale,
        "gradient_dtype": config.gradient_dtype,
        **calibration_settings(config_source(config.calibration), config.num_samples, config.seqlen, config.seed),
    }
    try:
        check_cache_settings(path, settings, required_norms(config))
    except GradientCacheError as err:
        raise UsageError(f"{err}. {advice}") from None


def check_output_file(path: str) -> Path:
    """A file to write (a gradient cache): not a folder, and its first existing parent writable."""
    import os

    target = Path(path).expanduser().absolute()
    if target.is_dir():
        raise UsageError(f"{path!r} is a directory: give a file path such as grads.safetensors")
    parent = target.parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir() or not os.access(parent, os.W_OK):
        raise UsageError(f"cannot write {target}: {parent} is not a writable directory")
    return target
