"""A small Hugging Face Hub look-alike, served over real HTTP on 127.0.0.1, for offline tests.

`LocalHubServer` implements the Hub API routes the real `huggingface_hub` client uses to create repos, commit
files, download them, read model cards and manage collections. State lives in memory (file contents under
``<root>/blobs`` when a folder is given). ``preupload`` answers ``uploadMode: "regular"`` for every file, so the
client sends contents base64-encoded inside the commit and never needs the LFS or Xet routes.

How to point clients at it:

* ``HfApi(endpoint=hub.endpoint, token=...)``, ``hf_hub_download``/``snapshot_download(..., endpoint=hub.endpoint)``
  only need the endpoint, plus ``huggingface_hub.constants.HF_HUB_OFFLINE = False``: the client checks that
  constant (read from ``HF_HUB_OFFLINE`` at import) before every request.
* ``ModelCard.load``, ``transformers.AutoConfig.from_pretrained`` and other endpoint-less callers use
  ``constants.ENDPOINT`` and ``constants.HUGGINGFACE_CO_URL_TEMPLATE``, also fixed at import time from
  ``HF_ENDPOINT``: ``patch_hub_in_process(monkeypatch, hub.endpoint, cache_dir=...)`` patches them (and the offline
  flag, token and cache folder) for one test.
* A subprocess gets ``env={**os.environ, **hub_env(hub.endpoint, token, home=tmp_path / "hf")}``, set before it
  imports ``huggingface_hub``.
"""

from __future__ import annotations

import base64
import contextlib
import copy
import hashlib
import json
import logging
import os
import re
import socket
import threading
import uuid
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

logger = logging.getLogger(__name__)

_TYPES = {"models": "model", "datasets": "dataset", "spaces": "space"}
_PREFIX = {"model": "", "dataset": "datasets/", "space": "spaces/"}
_GITATTRIBUTES = b"*.safetensors filter=lfs diff=lfs merge=lfs -text\n*.bin filter=lfs diff=lfs merge=lfs -text\n"
_REPO = r"(?P<kind>models|datasets|spaces)/(?P<repo>[^/]+/[^/]+)"
_COLL = r"/api/collections/(?P<ns>[^/]+)/(?P<slug>[^/]+)"


def git_sha1(data: bytes) -> str:
    """Git blob id (`git hash-object`), which is also what the client computes to skip unchanged files."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def _front_matter(text: str) -> dict | None:
    """YAML metadata block of a README, as the Hub exposes it in `cardData` (pyyaml ships with huggingface_hub)."""
    import yaml

    match = re.match(r"^\s*---\r?\n(.*?)\r?\n---", text, re.DOTALL)
    data = yaml.safe_load(match.group(1)) if match else None
    return data if isinstance(data, dict) else None


def _slug(namespace: str, title: str, oid: str) -> str:
    """Collection slug as the Hub builds it: `namespace/title-words-<24 hex id>`."""
    return f"{namespace}/{re.sub(r'[^a-z0-9]+', '-', title.lower()).strip('-') or 'collection'}-{oid}"


def _entry(kind: str, path: str, oid: str, size: int) -> dict:
    """One `/tree` or `/paths-info` item."""
    return {"type": kind, "path": path, "oid": oid, "size": size}


def hub_env(endpoint: str, token: str | None = "hf_test", home: str | os.PathLike | None = None) -> dict[str, str]:
    """Environment variables a subprocess needs to talk to `endpoint` instead of huggingface.co."""
    env = {"HF_ENDPOINT": endpoint, "HF_HUB_OFFLINE": "0", "TRANSFORMERS_OFFLINE": "0", "HF_DATASETS_OFFLINE": "0"}
    env.update(HF_HUB_DISABLE_TELEMETRY="1", HF_HUB_DISABLE_PROGRESS_BARS="1", HF_HUB_DISABLE_UPDATE_CHECK="1")
    env.update(HF_HUB_ETAG_TIMEOUT="10", HF_HUB_DOWNLOAD_TIMEOUT="30")
    # A proxy configured on the machine must never see requests meant for the local server.
    env["NO_PROXY"] = ",".join(filter(None, ["127.0.0.1", "localhost", os.environ.get("NO_PROXY", "")]))
    env["no_proxy"] = env["NO_PROXY"]
    if token is not None:
        env["HF_TOKEN"] = token
    if home is not None:
        env["HF_HOME"] = str(home)
        env["HF_HUB_CACHE"] = str(Path(home) / "hub")
    return env


def patch_hub_in_process(
    monkeypatch: Any, endpoint: str, token: str | None = "hf_test", cache_dir: Any = None
) -> None:
    """Point this process's `huggingface_hub` defaults at `endpoint`, undone by pytest's `monkeypatch` afterwards."""
    from huggingface_hub import constants
    from huggingface_hub.utils import _detect_agent

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "HF_HUB_DISABLE_TELEMETRY", True)
    monkeypatch.setattr(constants, "ENDPOINT", endpoint)
    template = endpoint + "/{repo_id}/resolve/{revision}/{filename}"
    monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE", template)
    # The agent registry would otherwise be fetched from (and cached under) the real HF_HOME.
    monkeypatch.setattr(_detect_agent, "_registry", {"standardEnvVars": [], "harnesses": {}})
    for name, value in hub_env(endpoint, token).items():
        monkeypatch.setenv(name, value)
    if token is None:
        monkeypatch.delenv("HF_TOKEN", raising=False)
    if cache_dir is not None:
        monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache_dir))
        # hf_xet reads this when upload_folder first creates its (process-wide) session; keeps ~/.cache clean.
        monkeypatch.setenv("HF_XET_CACHE", str(Path(cache_dir) / "xet"))


class HubError(Exception):
    """Turned into an HTTP error response carrying the Hub's `X-Error-Code` / `X-Error-Message` headers."""

    def __init__(
        self, status: int, message: str, code: str | None = None, headers: dict | None = None, body: dict | None = None
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.code, self.headers = status, message, code, headers or {}
        self.body = {"error": message, **(body or {})}


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive: httpx pools connections
    server: _HTTPServer

    def log_message(self, fmt: str, *args: Any) -> None:  # route the access log to `logging`, not stderr
        logger.debug("hub %s - %s", self.address_string(), fmt % args)

    def setup(self) -> None:
        super().setup()
        self.server.connections.add(self.connection)

    def finish(self) -> None:
        self.server.connections.discard(self.connection)
        super().finish()

    def _dispatch(self) -> None:
        # The client always sends a Content-Length; draining the body keeps the keep-alive connection in sync.
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        hub = self.server.hub
        url = urlsplit(self.path)
        query = {k: v[-1] for k, v in parse_qs(url.query).items()}
        try:
            status, payload, headers = hub.handle(self.command, url.path, query, body, self.headers)
        except HubError as err:
            # Header values must be latin-1: keep the message ASCII (the JSON body has the full text).
            status, headers = err.status, {"X-Error-Message": err.message.encode("ascii", "replace").decode()}
            headers.update(err.headers)
            if err.code:
                headers["X-Error-Code"] = err.code
            payload = err.body
        except Exception as err:  # a bug in the fake must surface as a 500, not as a dropped connection
            logger.exception("hub: error handling %s %s", self.command, self.path)
            status, payload = 500, {"error": repr(err)}
        with hub.lock:
            hub.requests.append((self.command, url.path, status))
        raw = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        self.send_response(status)
        headers.setdefault("Content-Type", "application/json" if not isinstance(payload, bytes) else "text/plain")
        headers.setdefault("Content-Length", str(len(raw)))
        for key, value in headers.items():
            self.send_header(key, str(value))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(raw)

    do_GET = do_HEAD = do_POST = do_PUT = do_PATCH = do_DELETE = _dispatch


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False

    def __init__(self, hub: LocalHubServer) -> None:
        self.hub = hub
        self.connections: set[socket.socket] = set()
        super().__init__(("127.0.0.1", 0), _Handler)

    def handle_error(self, request: Any, client_address: Any) -> None:
        # Clients dropping connections (e.g. at shutdown) are expected: log instead of printing tracebacks.
        logger.debug("local hub: connection error from %s", client_address, exc_info=True)


class LocalHubServer:
    """Hub look-alike on a random 127.0.0.1 port. Use as a context manager; `endpoint` is its base URL.

    `token`: when not None, writes and `whoami` require `Authorization: Bearer <token>` (401 otherwise), and
    private repos are hidden from anonymous readers. `user` / `orgs`: namespaces the token may write to.
    `token_role`: what `whoami` reports for the token ("write", or "read" for a read-only token, whose writes get 403).
    """

    def __init__(
        self,
        root: str | os.PathLike | None = None,
        token: str | None = "hf_test",
        user: str = "test-user",
        orgs: tuple[str, ...] = ("test-org",),
        token_role: str = "write",
    ) -> None:
        self.root = Path(root) if root is not None else None
        self.token, self.user, self.orgs, self.token_role = token, user, tuple(orgs), token_role
        self.lock = threading.RLock()
        self.repos: dict[tuple[str, str], dict] = {}  # (repo_type, repo_id) -> repo state
        self._collections: dict[str, dict] = {}  # collection object id -> collection
        self._blobs: dict[str, bytes] = {}
        self.requests: list[tuple[str, str, int]] = []  # (method, path, status) log, for assertions
        self._fail_commits = 0
        self._httpd: _HTTPServer | None = None
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------ lifecycle & test helpers
    @property
    def endpoint(self) -> str:
        assert self._httpd is not None, "server not started"
        return f"http://127.0.0.1:{self._httpd.server_address[1]}"

    def start(self) -> LocalHubServer:
        if self.root is not None:
            (self.root / "blobs").mkdir(parents=True, exist_ok=True)
        self._httpd = _HTTPServer(self)
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()
        logger.info("local hub listening on %s", self.endpoint)
        return self

    def stop(self) -> None:
        if self._httpd is None:
            return
        self._httpd.shutdown()
        for conn in list(self._httpd.connections):  # unblock handler threads waiting on idle keep-alive sockets
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
        self._httpd.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._httpd = self._thread = None

    def __enter__(self) -> LocalHubServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def fail_next_commits(self, n: int = 1) -> None:
        """Make the next `n` commit requests fail with HTTP 500 before anything is written."""
        with self.lock:
            self._fail_commits = n

    def commits(self, repo_id: str, repo_type: str = "model") -> list[dict]:
        """Commits of the repo, oldest first (the first one is the Hub's automatic "initial commit").

        Each entry: `oid`, `parent`, `title`, `message`, `date`, `changed` (False when the commit left the tree
        identical to its parent) and `files` (path -> blob id after the commit).
        """
        with self.lock:
            return copy.deepcopy(self._get_repo(repo_type, repo_id, check_auth=False)["commits"])

    def file_content(self, repo_id: str, path: str, revision: str = "main", repo_type: str = "model") -> bytes:
        with self.lock:
            return self._blob(self._files(self._get_repo(repo_type, repo_id, check_auth=False), revision)[path])

    @property
    def collections(self) -> dict[str, dict]:
        """Collections by slug, in the JSON shape the API returns."""
        with self.lock:
            return {c["slug"]: copy.deepcopy(c) for c in self._collections.values()}

    # ------------------------------------------------------------------ storage
    def _put_blob(self, data: bytes) -> str:
        oid = git_sha1(data)
        if self.root is not None:
            (self.root / "blobs" / oid).write_bytes(data)
        else:
            self._blobs[oid] = data
        return oid

    def _blob(self, oid: str) -> bytes:
        return (self.root / "blobs" / oid).read_bytes() if self.root is not None else self._blobs[oid]

    def _size(self, oid: str) -> int:
        return (self.root / "blobs" / oid).stat().st_size if self.root is not None else len(self._blobs[oid])

    def _authorized(self, headers: Any) -> bool:
        return self.token is None or headers.get("Authorization", "") == f"Bearer {self.token}"

    def _get_repo(self, repo_type: str, repo_id: str, headers: Any = None, check_auth: bool = True) -> dict:
        repo = self.repos.get((repo_type, repo_id))
        if repo is None or (check_auth and repo["private"] and not self._authorized(headers)):
            raise HubError(404, "Repository not found", "RepoNotFound")
        return repo

    def _commit_oid(self, repo: dict, revision: str) -> str:
        revision = revision.removeprefix("refs/heads/")
        if revision in repo["branches"]:
            return repo["branches"][revision]
        matches = [c["oid"] for c in repo["commits"] if len(revision) >= 7 and c["oid"].startswith(revision)]
        if len(matches) == 1:
            return matches[0]
        raise HubError(404, f"Invalid rev id: {revision}", "RevisionNotFound")

    def _files(self, repo: dict, revision: str) -> dict[str, str]:
        oid = self._commit_oid(repo, revision)
        return next(c["files"] for c in repo["commits"] if c["oid"] == oid)

    def _add_commit(self, repo: dict, branch: str, title: str, message: str, files: dict[str, str]) -> dict:
        parent = repo["branches"].get(branch)
        before = self._files(repo, parent) if parent else {}
        oid = hashlib.sha1(f"{parent}:{title}:{uuid.uuid4()}".encode()).hexdigest()  # unique across servers
        commit = {"oid": oid, "parent": parent, "title": title, "message": message, "date": _now()}
        commit.update(changed=files != before, files=files)
        repo["commits"].append(commit)
        repo["branches"][branch] = oid
        repo["lastModified"] = commit["date"]
        return commit

    # ------------------------------------------------------------------ routing
    def handle(self, method: str, path: str, query: dict, body: bytes, headers: Any) -> tuple[int, Any, dict]:
        for verb, pattern, name in _ROUTES:
            match = re.fullmatch(pattern, path)
            if match and method in verb.split("|"):
                args = {k: unquote(v) for k, v in match.groupdict().items() if v is not None}
                if "kind" in args:
                    args["kind"] = _TYPES[args["kind"]]
                request = {"method": method, "query": query, "body": body, "headers": headers}
                with self.lock:
                    result = getattr(self, name)(request, **args)
                return result if isinstance(result, tuple) else (200, result, {})
        logger.warning("local hub: unhandled route %s %s", method, path)
        raise HubError(404, f"Route not implemented by the local hub: {method} {path}")

    def _require_write(self, request: dict, namespace: str | None = None) -> None:
        if not self._authorized(request["headers"]):
            raise HubError(401, "Invalid credentials in Authorization header")
        if self.token_role == "read":
            raise HubError(403, "This token has read-only access")
        if namespace is not None and namespace not in (self.user, *self.orgs):
            raise HubError(403, f"You don't have the rights to write in the namespace {namespace}")

    @staticmethod
    def _json(request: dict) -> Any:
        return json.loads(request["body"] or b"{}")

    # ------------------------------------------------------------------ account & misc
    def r_whoami(self, request: dict) -> dict:
        if self.token is not None and not self._authorized(request["headers"]):
            raise HubError(401, "Invalid credentials in Authorization header")
        orgs = [{"type": "org", "name": org, "fullname": org, "roleInOrg": "admin"} for org in self.orgs]
        auth = {"type": "access_token", "accessToken": {"displayName": "local-hub", "role": self.token_role}}
        return {"type": "user", "id": "0" * 24, "name": self.user, "fullname": self.user, "orgs": orgs, "auth": auth}

    def r_validate_yaml(self, request: dict) -> dict:
        try:
            _front_matter(self._json(request).get("content", ""))
        except Exception as err:  # yaml.YAMLError, but also any odd structure
            raise HubError(400, "Invalid metadata in README.md", body={"errors": [{"message": str(err)}]}) from err
        return {"errors": [], "warnings": []}

    def r_agent_harnesses(self, request: dict) -> dict:
        return {"standardEnvVars": [], "harnesses": {}}

    # ------------------------------------------------------------------ repos
    def r_create_repo(self, request: dict) -> tuple[int, dict, dict]:
        data = self._json(request)
        namespace, repo_type = data.get("organization") or self.user, data.get("type") or "model"
        self._require_write(request, namespace)
        repo_id = f"{namespace}/{data['name']}"
        url = f"{self.endpoint}/{_PREFIX[repo_type]}{repo_id}"
        if (repo_type, repo_id) in self.repos:
            raise HubError(409, "You already created this repo", body={"url": url})
        private = bool(data.get("private")) or data.get("visibility") == "private"
        repo = {"private": private, "createdAt": _now(), "branches": {}, "commits": []}
        self.repos[(repo_type, repo_id)] = repo
        self._add_commit(repo, "main", "initial commit", "", {".gitattributes": self._put_blob(_GITATTRIBUTES)})
        return 200, {"url": url, "name": repo_id, "id": uuid.uuid4().hex[:24]}, {}

    def r_repo_info(self, request: dict, kind: str, repo: str, rev: str = "main") -> dict:
        state = self._get_repo(kind, repo, request["headers"])
        sha = self._commit_oid(state, rev)
        files = self._files(state, sha)
        info = {key: state[key] for key in ("private", "createdAt", "lastModified")}
        info.update(_id=hashlib.sha1(repo.encode()).hexdigest()[:24], id=repo, author=repo.split("/")[0], sha=sha)
        info.update(gated=False, disabled=False, downloads=0, likes=0, tags=[])
        info["siblings"] = [{"rfilename": p, "size": self._size(b), "blobId": b} for p, b in sorted(files.items())]
        if "README.md" in files:
            card = _front_matter(self._blob(files["README.md"]).decode("utf-8", "replace"))
            if card:
                info["cardData"] = card
                tags = card.get("tags") or []
                tags = [tags] if isinstance(tags, str) else list(tags)
                info["tags"] = ([card["library_name"]] if card.get("library_name") else []) + tags
                for key in ("library_name", "pipeline_tag"):
                    if card.get(key):
                        info[key] = card[key]
        if kind == "space":
            info["sdk"] = (info.get("cardData") or {}).get("sdk", "static")
        return info

    def r_tree(self, request: dict, kind: str, repo: str, rev: str, path: str = "") -> list[dict]:
        files = self._files(self._get_repo(kind, repo, request["headers"]), rev)
        path, recursive = path.strip("/"), request["query"].get("recursive", "").lower() in ("true", "1")
        prefix = f"{path}/" if path else ""
        below = {p[len(prefix) :]: b for p, b in files.items() if p.startswith(prefix)}
        if path and not below:
            raise HubError(404, f"{path} does not exist on {rev}", "EntryNotFound")
        entries: dict[str, dict] = {}
        for rel, blob in below.items():
            parts = rel.split("/")
            for depth in range(1, len(parts) if recursive else min(len(parts), 2)):
                folder = prefix + "/".join(parts[:depth])
                entries[folder] = _entry("directory", folder, git_sha1(folder.encode()), 0)
            if recursive or len(parts) == 1:
                entries[prefix + rel] = _entry("file", prefix + rel, blob, self._size(blob))
        return [entries[key] for key in sorted(entries)]

    def r_paths_info(self, request: dict, kind: str, repo: str, rev: str) -> list[dict]:
        files = self._files(self._get_repo(kind, repo, request["headers"]), rev)
        wanted = parse_qs(request["body"].decode()).get("paths", [])  # the client posts a form
        out = [_entry("file", p, files[p], self._size(files[p])) for p in wanted if p in files]
        folders = [p for p in wanted if any(f.startswith(p.rstrip("/") + "/") for f in files)]
        return out + [_entry("directory", p, git_sha1(p.encode()), 0) for p in folders]

    def r_refs(self, request: dict, kind: str, repo: str) -> dict:
        state = self._get_repo(kind, repo, request["headers"])
        branches = [{"name": n, "ref": f"refs/heads/{n}", "targetCommit": c} for n, c in state["branches"].items()]
        return {"branches": branches, "converts": [], "tags": [], "pullRequests": []}

    def r_list_commits(self, request: dict, kind: str, repo: str, rev: str) -> list[dict]:
        state = self._get_repo(kind, repo, request["headers"])
        by_oid, oid, out = {c["oid"]: c for c in state["commits"]}, self._commit_oid(state, rev), []
        while oid:
            commit = by_oid[oid]
            authors = [{"user": "system" if commit["parent"] is None else self.user}]
            out.append({"id": oid, "authors": authors, **{k: commit[k] for k in ("title", "message", "date")}})
            oid = commit["parent"]
        return out

    # ------------------------------------------------------------------ uploads
    def r_preupload(self, request: dict, kind: str, repo: str, rev: str) -> dict:
        state = self._get_repo(kind, repo, request["headers"])
        self._require_write(request)
        files = self._files(state, rev) if rev in state["branches"] else {}
        wanted = [f["path"] for f in self._json(request).get("files", [])]
        modes = [{"path": p, "uploadMode": "regular", "shouldIgnore": False, "oid": files.get(p)} for p in wanted]
        return {"files": modes}

    def r_commit(self, request: dict, kind: str, repo: str, rev: str) -> dict:
        state = self._get_repo(kind, repo, request["headers"])
        self._require_write(request)
        if self._fail_commits > 0:
            self._fail_commits -= 1
            raise HubError(500, "Simulated server failure (fail_next_commits)")
        if request["query"].get("create_pr"):
            raise HubError(501, "Pull requests are not supported by the local hub")
        branch = rev.removeprefix("refs/heads/")
        if branch not in state["branches"]:
            raise HubError(404, f"Invalid rev id: {rev}", "RevisionNotFound")
        files = dict(self._files(state, branch))
        title, message = "", ""
        for line in request["body"].splitlines():
            if not line.strip():
                continue
            item = json.loads(line)
            key, value = item["key"], item["value"]
            if key == "header":
                title, message = value.get("summary", ""), value.get("description", "")
                parent = value.get("parentCommit")
                if parent and not state["branches"][branch].startswith(parent):
                    raise HubError(412, "A commit has happened since. Please refresh and try again.")
            elif key == "file":
                content = value["content"]
                raw = base64.b64decode(content) if value.get("encoding") == "base64" else content.encode()
                files[value["path"]] = self._put_blob(raw)
            elif key == "deletedFile":
                if files.pop(value["path"], None) is None:
                    raise HubError(404, f"A file with this name doesn't exist: {value['path']}", "EntryNotFound")
            elif key == "deletedFolder":
                folder = value["path"].rstrip("/") + "/"
                files = {p: b for p, b in files.items() if not p.startswith(folder)}
            else:  # lfsFile: the preupload route never asks for LFS, so this is a client/server mismatch
                raise HubError(400, f"Unsupported commit operation {key!r} (local hub stores regular files only)")
        if not title:
            raise HubError(400, "Commit summary is required")
        commit = self._add_commit(state, branch, title, message, files)
        url = f"{self.endpoint}/{_PREFIX[kind]}{repo}/commit/{commit['oid']}"
        return {"success": True, "commitOid": commit["oid"], "commitUrl": url, "pullRequestUrl": None}

    # ------------------------------------------------------------------ downloads
    def r_resolve(self, request: dict, repo: str, rev: str, path: str, prefix: str = "") -> tuple[int, bytes, dict]:
        state = self._get_repo(_TYPES.get(prefix, "model"), repo, request["headers"])
        sha = self._commit_oid(state, rev)
        files = self._files(state, sha)
        if path not in files:
            raise HubError(404, "Entry not found", "EntryNotFound", {"X-Repo-Commit": sha})
        data = self._blob(files[path])
        headers = {"X-Repo-Commit": sha, "ETag": f'"{files[path]}"', "Accept-Ranges": "bytes"}
        headers.update({"Content-Type": "application/octet-stream", "Content-Length": str(len(data))})
        match = re.fullmatch(r"bytes=(\d*)-(\d*)", request["headers"].get("Range", "") or "")
        if match and request["method"] == "GET" and any(match.groups()):
            start, end = match.groups()
            first = int(start) if start else max(len(data) - int(end), 0)
            last = min(int(end), len(data) - 1) if start and end else len(data) - 1
            if first >= len(data):
                raise HubError(416, "Range not satisfiable", headers={"Content-Range": f"bytes */{len(data)}"})
            headers["Content-Range"] = f"bytes {first}-{last}/{len(data)}"
            headers["Content-Length"] = str(last - first + 1)
            return 206, data[first : last + 1], headers
        return 200, data, headers

    # ------------------------------------------------------------------ collections
    def _collection(self, slug: str, headers: Any) -> dict:
        coll = self._collections.get(slug.rsplit("-", 1)[-1])  # the trailing id survives title changes
        if coll is None or (coll["private"] and not self._authorized(headers)):
            raise HubError(404, f"Collection {slug} not found")
        return coll

    def r_list_collections(self, request: dict) -> list[dict]:
        owner, item = request["query"].get("owner"), request["query"].get("item")
        out = []
        for coll in self._collections.values():
            items = [f"{i['type']}s/{i['id']}" for i in coll["items"]]
            if (owner is None or coll["owner"]["name"] == owner) and (item is None or item in items):
                public = {k: v for k, v in coll.items() if k != "position"}  # the client sets `position` itself
                out.append({**copy.deepcopy(public), "items": copy.deepcopy(coll["items"][:4])})
        return out

    def r_create_collection(self, request: dict) -> tuple[int, dict, dict]:
        data = self._json(request)
        namespace = data.get("namespace") or self.user
        self._require_write(request, namespace)
        for coll in self._collections.values():
            if coll["owner"]["name"] == namespace and coll["title"] == data["title"]:
                raise HubError(409, "Collection already exists", body={"slug": coll["slug"]})
        oid = uuid.uuid4().hex[:24]
        owner = {"name": namespace, "type": "org" if namespace in self.orgs else "user"}
        slug, title = _slug(namespace, data["title"], oid), data["title"]
        coll = {"slug": slug, "title": title, "description": data.get("description")}
        coll.update(owner=owner, items=[], lastUpdated=_now(), position=0, private=bool(data.get("private")))
        self._collections[oid] = {**coll, "theme": "default", "upvotes": 0, "gating": False}
        return 200, copy.deepcopy(self._collections[oid]), {}

    def r_collection(self, request: dict, ns: str, slug: str) -> Any:
        coll = self._collection(f"{ns}/{slug}", request["headers"])
        if request["method"] == "GET":
            return copy.deepcopy(coll)
        self._require_write(request, coll["owner"]["name"])
        if request["method"] == "DELETE":
            del self._collections[slug.rsplit("-", 1)[-1]]
            return {}
        data = self._json(request)
        for key in ("title", "description", "private", "theme", "position"):
            if key in data:
                coll[key] = data[key]
        if "title" in data:
            coll["slug"] = _slug(ns, data["title"], coll["slug"].rsplit("-", 1)[-1])
        coll["lastUpdated"] = _now()
        return {"success": True, "data": copy.deepcopy(coll)}

    def r_collection_items(self, request: dict, ns: str, slug: str) -> dict:
        coll = self._collection(f"{ns}/{slug}", request["headers"])
        self._require_write(request, coll["owner"]["name"])
        data = self._json(request)
        item_id, item_type = data["item"]["id"], data["item"]["type"]
        if item_type in ("model", "dataset", "space"):
            self._get_repo(item_type, item_id, request["headers"])  # the Hub refuses items that do not exist
        if any(i["id"] == item_id and i["type"] == item_type for i in coll["items"]):
            raise HubError(409, f"Item {item_type}/{item_id} is already in the collection")
        item = {"_id": uuid.uuid4().hex[:24], "id": item_id, "type": item_type, "position": len(coll["items"])}
        if data.get("note") is not None:
            item["note"] = {"text": data["note"], "html": data["note"]}
        coll["items"].append(item)
        coll["lastUpdated"] = _now()
        return copy.deepcopy(coll)

    def r_collection_item(self, request: dict, ns: str, slug: str, item: str) -> dict:
        coll = self._collection(f"{ns}/{slug}", request["headers"])
        self._require_write(request, coll["owner"]["name"])
        coll["items"] = [i for i in coll["items"] if i["_id"] != item]  # DELETE; updates are not supported
        return {"success": True}


# (methods, raw-path regex, LocalHubServer method); path segments are URL-unquoted after matching.
_ROUTES: list[tuple[str, str, str]] = [
    ("GET", r"/api/whoami-v2", "r_whoami"),
    ("POST", r"/api/validate-yaml", "r_validate_yaml"),
    ("GET", r"/api/agent-harnesses", "r_agent_harnesses"),
    ("POST", r"/api/repos/create", "r_create_repo"),
    ("GET", rf"/api/{_REPO}(?:/revision/(?P<rev>[^/]+))?", "r_repo_info"),
    ("GET", rf"/api/{_REPO}/tree/(?P<rev>[^/]+)(?:/(?P<path>.*))?", "r_tree"),
    ("POST", rf"/api/{_REPO}/paths-info/(?P<rev>[^/]+)", "r_paths_info"),
    ("GET", rf"/api/{_REPO}/refs", "r_refs"),
    ("GET", rf"/api/{_REPO}/commits/(?P<rev>[^/]+)", "r_list_commits"),
    ("POST", rf"/api/{_REPO}/preupload/(?P<rev>[^/]+)", "r_preupload"),
    ("POST", rf"/api/{_REPO}/commit/(?P<rev>[^/]+)", "r_commit"),
    ("GET", r"/api/collections", "r_list_collections"),
    ("POST", r"/api/collections", "r_create_collection"),
    ("GET|PATCH|DELETE", _COLL, "r_collection"),
    ("POST", _COLL + r"/items", "r_collection_items"),
    ("DELETE", _COLL + r"/items/(?P<item>[^/]+)", "r_collection_item"),
    (
        "GET|HEAD",
        r"/(?:(?P<prefix>datasets|spaces)/)?(?P<repo>[^/]+/[^/]+)/resolve/(?P<rev>[^/]+)/(?P<path>.+)",
        "r_resolve",
    ),
]
