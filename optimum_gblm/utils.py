"""Small shared helpers: devices, dtypes, temporary model state."""

from __future__ import annotations

import contextlib
import difflib
import functools
import hashlib
import inspect
import json
import os
import re
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar

import torch
from torch import nn

from .fields import OptionError

F = TypeVar("F", bound=Callable[..., Any])

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@contextlib.contextmanager
def torch_threads(count: int) -> Iterator[None]:
    """Run the block with `count` intra-op CPU threads, then restore the caller's count (also on errors)."""
    before = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def resolve_device(device: str) -> torch.device:
    """The torch device of a `device` setting; one this machine does not have raises `ValueError` (checked before
    anything is loaded: GBLMPruner.from_pretrained and the CLI call this first)."""
    if device in ("auto", "cuda") and torch.cuda.is_available() and "LOCAL_RANK" in os.environ:
        return torch.device("cuda", int(os.environ["LOCAL_RANK"]))  # torchrun / accelerate launch: one GPU each
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise OptionError(
                "device",
                "{opt}{device!r} was requested but CUDA is not available: use {opt}'cpu' or 'auto'",
                device=device,
            )
        index = torch.device(device).index
        if index is not None and index >= torch.cuda.device_count():
            raise OptionError(
                "device",
                "{opt}{device!r} does not exist: this machine has {count} CUDA device(s), cuda:0 to cuda:{last}",
                device=device,
                count=torch.cuda.device_count(),
                last=torch.cuda.device_count() - 1,
            )
    if device == "mps" and not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
        raise OptionError("device", "{opt}'mps' was requested but MPS is not available: use {opt}'cpu' or 'auto'")
    return torch.device(device)


# File suffixes that only a local path carries (a Hub id may contain dots: Qwen/Qwen2.5-0.5B).
FILE_SUFFIXES = frozenset(
    {".txt", ".md", ".json", ".jsonl", ".csv", ".parquet", ".arrow", ".safetensors", ".bin", ".pth", ".gguf"}
)
_DRIVE = re.compile(r"[A-Za-z]:[\\/]")  # C:\x, C:/x (a Hub id has no colon)


def looks_like_local_path(name: str) -> bool:
    """Only a local path can look like this: Hub ids (models, datasets) are `name` or `org/name`, without a
    backslash, a drive letter or a file suffix. Decided from the name alone: whether the path exists is the
    caller's question (a missing one is an error before `transformers` / `datasets` try the Hub with it)."""
    return (
        name in (".", "..")
        or name.startswith(("/", "./", "../", "~", ".\\"))
        or name.count("/") > 1
        or "\\" in name
        or _DRIVE.match(name) is not None
        or Path(name).suffix.lower() in FILE_SUFFIXES
    )


CALIBRATION_SOURCES = (
    "offline-corpus, c4, wikitext2, a text file, a datasets name (org/name) or a local dataset file or folder with a "
    "text column (.json, .jsonl, .csv, .parquet); image models: an image folder or a datasets image dataset"
)


def check_calibration_source(source: str, name: str = "calibration=") -> None:
    """A calibration source that can only be a local path must exist: otherwise `datasets` would look the name up on
    the Hub and fail with a misleading connection error. `name` is how the caller spells the setting."""
    if looks_like_local_path(source) and not Path(source).expanduser().exists():
        raise FileNotFoundError(
            f"{name}{source!r} looks like a local file, but {Path(source).expanduser().absolute()} does not exist. "
            f"Calibration sources: {CALIBRATION_SOURCES}"
        )


def move_to(obj: Any, device: torch.device) -> Any:
    """Move tensors inside nested tuples / lists / dicts to `device`."""
    if isinstance(obj, torch.Tensor):
        return obj.to(device)
    if isinstance(obj, dict):
        return {k: move_to(v, device) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(move_to(v, device) for v in obj)
    return obj


def read_json(path: Path, error: type[Exception] = ValueError) -> Any:
    """The JSON content of `path`; invalid JSON or text raises `error` naming the file and where it breaks."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise error(
            f"{path} is not valid JSON ({err.msg} at line {err.lineno}, column {err.colno}): truncated or corrupt"
        ) from None
    except UnicodeDecodeError:
        raise error(f"{path} is not UTF-8 text: corrupt") from None


def writer_tag() -> str:
    """`PID.HOST` for the names of temporary files: a later writer can tell a killed writer's leftovers (this host,
    process gone) from those of a writer still at work, here or on another host sharing the folder."""
    import socket

    host = hashlib.sha256(socket.gethostname().encode()).hexdigest()[:8]
    return f"{os.getpid()}.{host}"


def write_text_atomic(path: Path, text: str) -> Path:
    """Write `text` beside `path` and move it over it: readers never see half a file, and a writer killed mid-write
    leaves the previous file as it was."""
    tmp = path.with_name(f".{path.name}.tmp-{writer_tag()}")
    try:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def written_by_dead_process(tag: str) -> bool:
    """Whether a `writer_tag` names a process of this host that no longer exists."""
    pid, _, host = tag.partition(".")
    if not pid.isdigit() or host != writer_tag().partition(".")[2]:
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # alive, another user's
        return False
    return False


def tensor_fingerprint(*tensors: torch.Tensor) -> str:
    """Hash of the shapes and bytes of tensors (calibration sets, gradient caches)."""
    digest = hashlib.sha256()
    for t in tensors:
        digest.update(str(tuple(t.shape)).encode())
        digest.update(t.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:32]


def samples_fingerprint(samples: Iterable[tuple[torch.Tensor, ...]]) -> str:
    """The calibration fingerprint: a hash of the multiset of samples, each given as the tensors that identify it
    (an adapter's `fingerprint_tensors`). Sample order does not count: accumulations and statistics are sums, and
    a Trainer or a DataLoader may shuffle."""
    digests = sorted(tensor_fingerprint(*sample) for sample in samples)
    return hashlib.sha256(" ".join(digests).encode()).hexdigest()[:32]


def sample_tensors(sample: Any) -> tuple[torch.Tensor, ...]:
    """Every tensor of one sample (a tensor, a dict in key order, or a tuple): the fallback fingerprint tensors of
    samples that no adapter understands."""
    if isinstance(sample, torch.Tensor):
        return (sample,)
    if hasattr(sample, "keys"):
        values = [sample[k] for k in sorted(sample.keys())]
    else:
        values = sample if isinstance(sample, (tuple, list)) else ()
    return tuple(v for v in values if isinstance(v, torch.Tensor))


def model_device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def requires_grad_flags(model: nn.Module) -> dict[str, bool]:
    """Each parameter's `requires_grad`, by name: what `restore_requires_grad` puts back."""
    return {name: p.requires_grad for name, p in model.named_parameters()}


def restore_requires_grad(model: nn.Module, flags: dict[str, bool], missing: bool | None = None) -> None:
    """Put back the `requires_grad_flags` of `model`; a parameter they do not name gets `missing` (None: keeps its
    own)."""
    for name, p in model.named_parameters():
        p.requires_grad_(flags.get(name, p.requires_grad if missing is None else missing))


@contextlib.contextmanager
def model_state(
    model: nn.Module,
    trainable: Iterable[nn.Parameter] | None = None,
    train: bool | None = None,
    clear_grads: bool = False,
) -> Iterator[None]:
    """For the duration, only `trainable` require grad (None: the flags are left alone), the model is in train
    mode `train` (None: left alone), and with `clear_grads` no parameter holds a `.grad` (dropped on entry and on
    exit). What was changed is restored on exit, also on errors: the flags by name, the mode by `model.train`."""
    flags = requires_grad_flags(model) if trainable is not None else None
    training = model.training
    try:
        for p in model.parameters():
            if flags is not None:
                p.requires_grad_(False)
            if clear_grads:
                p.grad = None
        for p in trainable or ():
            p.requires_grad_(True)
        if train is not None:
            model.train(train)
        yield
    finally:
        if clear_grads:
            for p in model.parameters():
                p.grad = None
        if flags is not None:
            restore_requires_grad(model, flags)
        if train is not None:
            model.train(training)


@contextlib.contextmanager
def inference_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Eval mode, no autograd and no KV cache for the duration; the previous state is restored, also on errors."""
    config = getattr(model, "config", None)
    use_cache = getattr(config, "use_cache", None)
    if use_cache is not None:
        config.use_cache = False
    try:
        with model_state(model, train=False), torch.no_grad():
            yield model
    finally:
        if use_cache is not None:
            config.use_cache = use_cache


def peak_rss_gib() -> float:
    """Peak resident memory of this process. VmHWM belongs to the current address space, unlike ru_maxrss,
    which Linux carries over from the parent through fork + exec (a child of a big process would report the
    parent's peak)."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 2**20
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def suggest_keywords(**aliases: str) -> Callable[[F], F]:
    """Decorator: an unknown keyword argument raises a TypeError that names the right one (`aliases` maps likely
    spellings, e.g. the CLI's, to it; otherwise the closest accepted name), while `help()` and `inspect` still show
    the function's own signature (functools.wraps)."""

    def decorate(func: F) -> F:
        params = inspect.signature(func).parameters
        accepted = [
            n for n, p in params.items() if n != "self" and p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)
        ]

        @functools.wraps(func)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            for key in kwargs:
                if key not in params:
                    right = aliases.get(key) or next(iter(difflib.get_close_matches(key, accepted, 1)), None)
                    hint = f"did you mean {right}=?" if right else f"accepted: {', '.join(accepted)}"
                    raise TypeError(f"{func.__qualname__}() got an unexpected keyword argument {key!r}: {hint}")
            return func(*args, **kwargs)

        return wrapper  # type: ignore[return-value]

    return decorate


@contextlib.contextmanager
def forwards_replaced(blocks: Sequence[nn.Module], forwards: Sequence[Callable[..., Any]]) -> Iterator[None]:
    """Give each block an instance `forward` for the duration, then restore what it had. The model's own loop still
    calls the real modules, so their hooks (accelerate's, the model's output-capturing ones) and the attributes the
    loop reads off a layer stay in place."""
    saved = [vars(block).get("forward") for block in blocks]  # accelerate's hooks may have set one
    for block, forward in zip(blocks, forwards):
        block.forward = forward
    try:
        yield
    finally:
        for block, own in zip(blocks, saved):
            if own is None:
                del block.forward  # the class's forward again
            else:
                block.forward = own
