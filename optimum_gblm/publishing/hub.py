"""Publish saved checkpoints to the Hugging Face Hub: the exact folder `save_pretrained` wrote, card included.

`model.push_to_hub` of transformers would rewrite the README from the remote or a default card, so the folder is
uploaded as it is with `HfApi.upload_folder`. The token is only handed to `HfApi`; it is never logged or written.
"""

from __future__ import annotations

import json
import logging
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..configuration import CONFIG_NAME
from ..fields import OptionError

if TYPE_CHECKING:
    from huggingface_hub import CommitInfo

logger = logging.getLogger(__name__)

try:  # the HTTP client's own errors (connection refused, timeouts) are not OSErrors
    from httpx2 import HTTPError as _ClientError
except ImportError:  # pragma: no cover - older huggingface_hub releases use httpx
    try:
        from httpx import HTTPError as _ClientError
    except ImportError:
        _ClientError = OSError  # type: ignore[misc,assignment]

NETWORK_ERRORS: tuple[type[BaseException], ...] = (OSError, _ClientError)


class HubPublishError(RuntimeError):
    """The Hub refused or failed an operation; nothing local was changed, so the same call can simply be retried."""

    def __init__(self, message: str, repo_id: str, reason: str, folder: Path | None = None) -> None:
        super().__init__(message)
        self.repo_id, self.reason, self.folder = repo_id, reason, folder


def _scrub(text: str, token: str | None) -> str:
    """Belt and braces: server messages never echo the token, but an error must not leak it if one ever did."""
    return text.replace(token, "***") if token else text


# What to do about the statuses a push meets most (library and CLI users alike).
_HINTS = {
    401: "the token is invalid or expired: pass a valid write token (token=, --token or HF_TOKEN) "
    "or run `hf auth login`",
    403: "the token may not write there: use a write token of the owner or of a member of its organization",
}


def _chain(err: BaseException | None) -> list[BaseException]:
    """`err` and the errors it was raised from or while handling: the client sometimes hides a 401 behind a later,
    unrelated error (an `HfUriError` while it looks for an existing repo), or re-raises it without the server's
    message (`whoami`)."""
    chain: list[BaseException] = []
    while err is not None and all(err is not seen for seen in chain):
        chain.append(err)
        err = err.__cause__ or err.__context__
    return chain


def _http_error(err: BaseException) -> BaseException | None:
    for error in _chain(err):
        response = getattr(error, "response", None)
        if response is not None and getattr(response, "request", None) is not None:
            return error
    return None


def describe_error(err: BaseException, token: str | None = None) -> str:
    """One line: HTTP status, request, the server's own message and a hint, else the exception."""
    http = _http_error(err)
    if http is not None:
        response = http.response  # type: ignore[attr-defined]
        text = f"HTTP {response.status_code} on {response.request.method} {response.request.url}"
        server = next((e.server_message for e in _chain(http) if getattr(e, "server_message", None)), None)
        text += f": {server}" if server else ""
        text += f". Hint: {_HINTS[response.status_code]}" if response.status_code in _HINTS else ""
    else:
        text = f"{type(err).__name__}: {err}"
    return _scrub(" ".join(text.split()), token)


def check_write_access(repo_id: str, *, token: str | None = None, endpoint: str | None = None) -> str:
    """Before any heavy work: the token is valid (`whoami`, nothing is created), not read-only, and its user or one
    of their organizations owns the repo's namespace. Returns the user name; raises `HubPublishError`."""
    from huggingface_hub import HfApi
    from huggingface_hub.errors import LocalTokenNotFoundError

    check_repo_id(repo_id)

    def refuse(reason: str, cause: BaseException | None = None) -> HubPublishError:
        error = HubPublishError(f"cannot push to the Hub repo {repo_id!r}: {reason}", repo_id, reason)
        error.__cause__ = cause
        return error

    try:
        me = HfApi(endpoint=endpoint, token=token).whoami()
    except LocalTokenNotFoundError as err:
        raise refuse("no Hub token: pass token= (--token), set HF_TOKEN or run `hf auth login`", err) from err
    except NETWORK_ERRORS as err:
        raise refuse(describe_error(err, token), err) from err
    user = str(me.get("name"))
    if ((me.get("auth") or {}).get("accessToken") or {}).get("role") == "read":
        raise refuse(f"the token of {user!r} is read-only: use a token with write access")
    namespaces = [user, *(str(org.get("name")) for org in me.get("orgs") or [])]
    namespace = repo_id.split("/")[0] if "/" in repo_id else user
    if namespace not in namespaces:
        raise refuse(
            f"the token belongs to {user!r}, who cannot write to {namespace!r} (writable: {', '.join(namespaces)})"
        )
    return user


def check_repo_id(repo_id: str) -> str:
    """Validate a repo id (`name` or `namespace/name`) before any work is done."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(repo_id)
    except HFValidationError as err:
        raise ValueError(f"invalid Hub repo id {repo_id!r}: {err}") from None
    return repo_id


def check_checkpoint_folder(folder: str | Path, allow_dense: bool = False) -> Path:
    """An optimum-gblm checkpoint: a folder with a valid `gblm_config.json` that holds a pruning map (unless
    `allow_dense`: a model saved dense) and a README.md whose metadata parses."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder} is not a folder: save the model with save_pretrained first")
    missing = [name for name in (CONFIG_NAME, "README.md") if not (folder / name).is_file()]
    if missing:
        raise FileNotFoundError(
            f"{folder} is not an optimum-gblm checkpoint (missing {', '.join(missing)}): "
            "write it with GBLMPruner.save_pretrained(..., model_card=True)"
        )
    from huggingface_hub import metadata_load
    from huggingface_hub.repocard_data import model_index_to_eval_results

    try:  # fail here, before any request, rather than in the Hub's YAML validation
        metadata = metadata_load(folder / "README.md") or {}
        if metadata.get("model-index"):
            model_index_to_eval_results(metadata["model-index"])
    except Exception as err:
        raise ValueError(f"{folder / 'README.md'} has invalid metadata: {err}") from err
    from .sidecar import read_sidecar

    if not read_sidecar(folder).get("pruning_map") and not allow_dense:  # an invalid side-car raises, named
        raise OptionError(
            "allow_dense",
            "{sidecar} has no pruning map: the model was saved without being pruned. Prune it first, or pass {flag} "
            "to publish it as a dense model",
            sidecar=folder / CONFIG_NAME,
        )
    return folder


def _default_message(folder: Path) -> str:
    from .sidecar import read_sidecar

    sidecar = read_sidecar(folder)
    config = sidecar["config"]
    if not sidecar.get("pruning_map"):
        return "Upload dense model, not pruned (optimum-gblm)"
    return f"Upload {config['method']} {config['pattern']} {config['sparsity']:.0%} pruned model (optimum-gblm)"


def push_folder(
    folder: str | Path,
    repo_id: str,
    *,
    token: str | None = None,
    private: bool | None = None,
    commit_message: str | None = None,
    revision: str | None = None,
    endpoint: str | None = None,
    allow_dense: bool = False,
) -> CommitInfo:
    """Create the repo if needed and upload exactly `folder` (files on the Hub that the folder lacks are removed,
    so stale shards never linger). Pushing an unchanged folder again makes no commit. A folder saved without this
    repo id is uploaded with its side-car and generated card naming the repo (`staged_for_repo`: the local folder
    is left as it is). A model saved without being pruned is refused unless `allow_dense`.

    Returns the commit URL, a `str` whose `.oid` is the commit id. Server errors raise `HubPublishError`.
    """
    check_repo_id(repo_id)
    folder = check_checkpoint_folder(folder, allow_dense)
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfUriError

    from .checkpoint import staged_for_repo

    api = HfApi(endpoint=endpoint, token=token)
    logger.info("Pushing %s to %s%s", folder, repo_id, f" (revision {revision})" if revision else "")
    try:
        repo_id = api.create_repo(repo_id, private=private, exist_ok=True).repo_id
        if revision and revision != "main":
            api.create_branch(repo_id, branch=revision, exist_ok=True)
        with staged_for_repo(folder, repo_id) as upload:
            info = api.upload_folder(
                repo_id=repo_id,
                folder_path=upload,
                commit_message=commit_message or _default_message(folder),
                revision=revision,
                delete_patterns=["*"],  # never deletes .gitattributes; files being uploaded are kept
            )
    except (*NETWORK_ERRORS, HfUriError) as err:  # HfUriError: raised while handling a refused create_repo
        reason = describe_error(err, token)
        raise HubPublishError(
            f"pushing {folder} to the Hub repo {repo_id!r} failed ({reason}). The local folder {folder} is intact; "
            "retrying is safe: files already on the Hub are skipped and the card is uploaded with the folder.",
            repo_id,
            reason,
            folder,
        ) from err
    logger.info("Pushed %s: %s", repo_id, info.commit_url)
    return info


def push_saved(
    save: Callable[[Path, bool], Path],
    repo_id: str,
    *,
    private: bool | None = None,
    token: str | None = None,
    commit_message: str | None = None,
    revision: str | None = None,
    endpoint: str | None = None,
    save_directory: str | Path | None = None,
    overwrite: bool = False,
    allow_dense: bool = False,
) -> CommitInfo:
    """`GBLMPruner.push_to_hub`: `save(folder, overwrite)` (to `save_directory` or a temporary folder), then
    `push_folder` of exactly that folder."""
    from .checkpoint import check_output_dir

    check_repo_id(repo_id)
    kwargs: dict[str, Any] = {"token": token, "private": private, "commit_message": commit_message}
    kwargs.update(revision=revision, endpoint=endpoint, allow_dense=allow_dense)
    if save_directory is not None:
        check_output_dir(save_directory, overwrite)  # before any network call
    check_write_access(repo_id, token=token, endpoint=endpoint)  # before saving
    if save_directory is not None:
        return push_folder(save(Path(save_directory), overwrite), repo_id, **kwargs)
    with tempfile.TemporaryDirectory(prefix="optimum-gblm-push-") as tmp:
        folder = save(Path(tmp) / repo_id.split("/")[-1], False)
        try:
            return push_folder(folder, repo_id, **kwargs)
        except HubPublishError as err:
            raise HubPublishError(
                f"pushing to the Hub repo {repo_id!r} failed ({err.reason}). The checkpoint was saved to a temporary "
                "folder, now removed; retrying push_to_hub is safe (files already on the Hub are skipped), or pass "
                "save_directory= to keep a local copy.",
                repo_id,
                err.reason,
            ) from None


def remote_sidecar(
    repo_id: str, *, token: str | None = None, endpoint: str | None = None, revision: str | None = None
) -> dict[str, Any] | None:
    """The `gblm_config.json` of a published checkpoint, or None when the repo or the file does not exist."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError, RepositoryNotFoundError, RevisionNotFoundError

    # A throw-away cache: a side-car is tiny and must reflect the Hub now, not an earlier download.
    with tempfile.TemporaryDirectory(prefix="optimum-gblm-remote-") as tmp:
        try:
            path = hf_hub_download(
                repo_id, CONFIG_NAME, revision=revision, token=token, endpoint=endpoint, cache_dir=tmp
            )
        except (RepositoryNotFoundError, RevisionNotFoundError, EntryNotFoundError):
            return None
        try:
            return json.loads(Path(path).read_text())
        except ValueError:
            logger.warning("%s has an unreadable %s: treating it as not published", repo_id, CONFIG_NAME)
            return None


def update_collection(
    title: str,
    namespace: str,
    items: list[tuple[str, str]],
    *,
    description: str | None = None,
    private: bool = False,
    token: str | None = None,
    endpoint: str | None = None,
) -> str:
    """Create the collection once (or find it by title), add the model repos `(repo_id, note)` that are not in it
    yet, and refresh its description. Returns the collection slug."""
    from huggingface_hub import HfApi

    api = HfApi(endpoint=endpoint, token=token)
    collection = api.create_collection(
        title, namespace=namespace, description=description, private=private, exists_ok=True
    )
    for repo_id, note in items:
        api.add_collection_item(collection.slug, repo_id, "model", note=note, exists_ok=True)
    if description is not None:
        api.update_collection_metadata(collection.slug, description=description)
    return collection.slug
