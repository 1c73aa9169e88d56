"""A Hugging Face Hub on loopback, for `models pull` tests: huggingface_hub's own client code
runs against it through HF_ENDPOINT, so what is tested is what happens with the real Hub.

It answers what huggingface_hub 2.4's `snapshot_download` asks, in the Hub's formats:

- `GET /api/models/{repo}/revision/{rev}`: the repo's info, whose `sha` is the commit;
- `GET /api/models/{repo}/tree/{commit}`: the file listing (one page), with each file's git
  blob sha1 (`oid`) and, for LFS files (here the weights), `lfs.oid`, their sha256;
- `HEAD /{repo}/resolve/{commit}/{file}`: `X-Repo-Commit` and the file's etag. A small file
  is answered here (`ETag`: its git blob sha1). An LFS file is a 302 to the CDN, another port,
  so another origin: huggingface_hub stops there and reads `X-Linked-Etag` (its sha256) and
  `X-Linked-Size`, then GETs the CDN without the Authorization header, as from the Hub;
- `GET` of either, with `Range: bytes=N-` honoured.

Every request is logged, and faults are switched on per test: a repo that wants a token
(401 without it), a gated repo (403 GatedRepo), a repo whose every request fails with a status
(a 5xx), a file listed but answered 404, a file served with other bytes than its etag says, a
transfer that stalls.
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
from dataclasses import dataclass, field
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

COMMIT = "c0ffee00" * 5
LFS_SUFFIX = ".safetensors"
_POINTER_SIZE = 134  # the size of a git-lfs pointer file, as the Hub reports it
_REVISION_API = re.compile(r"/api/models/(?P<repo>[^/]+/[^/]+)/revision/(?P<rev>[^/?]+)")
_TREE_API = re.compile(r"/api/models/(?P<repo>[^/]+/[^/]+)/tree/(?P<rev>[^/?]+)")
_RESOLVE = re.compile(r"/(?P<repo>[^/]+/[^/]+)/resolve/(?P<rev>[^/]+)/(?P<file>.+)")
_CDN = re.compile(r"/cdn/(?P<sha256>[0-9a-f]{64})")


def git_blob_sha1(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data, usedforsecurity=False).hexdigest()


@dataclass(frozen=True)
class Request:
    server: str  # "hub" or "cdn"
    method: str
    path: str
    authorization: str | None


@dataclass
class Repo:
    files: dict[str, bytes]
    token: str | None = None  # when set, the Hub answers 401 to requests without it
    gated: bool = False  # the Hub answers 403 GatedRepo: conditions not accepted
    failing: int | None = None  # every request about the repo gets this status
    unserved: set[str] = field(default_factory=set)  # listed, but its resolve answers 404
    served: dict[str, bytes] = field(default_factory=dict)  # bytes sent instead of files'

    def by_sha256(self, sha256: str) -> tuple[str, bytes] | None:
        for name, data in self.files.items():
            if hashlib.sha256(data).hexdigest() == sha256:
                return name, self.served.get(name, data)
        return None


def repo_from_folder(folder: Path) -> Repo:
    """A model folder's files (not its dot-files) as a Hub repo."""
    return Repo(
        {
            p.name: p.read_bytes()
            for p in sorted(folder.iterdir())
            if p.is_file() and not p.name.startswith(".")
        }
    )


class FakeHub:
    """The Hub and its CDN on two loopback ports; `url` is HF_ENDPOINT."""

    def __init__(self) -> None:
        self.repos: dict[str, Repo] = {}
        self.requests: list[Request] = []
        self.stall_file: str | None = None  # sent half-way, then held until the hub stops
        self.stalled = threading.Event()
        self._release = threading.Event()
        self._lock = threading.Lock()
        self._hub = self._serve("hub")
        self._cdn = self._serve("cdn")
        self.url = f"http://127.0.0.1:{self._hub.server_address[1]}"
        self.cdn_url = f"http://127.0.0.1:{self._cdn.server_address[1]}"

    def _serve(self, name: str) -> ThreadingHTTPServer:
        hub = self

        class Handler(_Handler):
            server_name = name
            fake = hub

        server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        server.daemon_threads = True
        threading.Thread(target=server.serve_forever, name=f"fake-{name}", daemon=True).start()
        return server

    def log(self, request: Request) -> None:
        with self._lock:
            self.requests.append(request)

    def logged(self) -> list[Request]:
        with self._lock:
            return list(self.requests)

    def hold(self) -> None:
        self.stalled.set()
        self._release.wait()

    def close(self) -> None:
        self._release.set()
        for server in (self._hub, self._cdn):
            server.shutdown()
            server.server_close()


class _Handler(BaseHTTPRequestHandler):
    server_name: str
    fake: FakeHub
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: the request log is `FakeHub.requests`."""

    def do_HEAD(self) -> None:
        self._answer(head=True)

    def do_GET(self) -> None:
        self._answer(head=False)

    def _answer(self, head: bool) -> None:
        path = self.path.split("?", 1)[0]
        self.fake.log(Request(self.server_name, self.command, path, self.headers["Authorization"]))
        if self.server_name == "cdn":
            return self._cdn(path, head)
        for pattern in (_REVISION_API, _TREE_API, _RESOLVE):
            if match := pattern.fullmatch(path):
                break
        else:
            return self._error(404, None)
        repo = self.fake.repos.get(match["repo"])
        if repo is None:
            return self._error(404, "RepoNotFound")
        if repo.failing is not None:
            return self._error(repo.failing, None)
        if repo.token is not None and self.headers["Authorization"] != f"Bearer {repo.token}":
            return self._error(401, None)
        if repo.gated:
            return self._error(403, "GatedRepo")
        if match["rev"] not in ("main", COMMIT):
            return self._error(404, "RevisionNotFound")
        if pattern is _REVISION_API:
            siblings = [{"rfilename": name} for name in repo.files]
            return self._json({"id": match["repo"], "sha": COMMIT, "siblings": siblings})
        if pattern is _TREE_API:
            return self._json([_tree_entry(name, data) for name, data in repo.files.items()])
        return self._resolve(repo, match["file"], head)

    def _cdn(self, path: str, head: bool) -> None:
        match = _CDN.fullmatch(path)
        for repo in self.fake.repos.values():
            if match and (found := repo.by_sha256(match["sha256"])):
                return self._content(*found, {}, head)
        return self._error(404, "EntryNotFound")

    def _resolve(self, repo: Repo, name: str, head: bool) -> None:
        data = repo.files.get(name)
        if data is None or name in repo.unserved:
            return self._error(404, "EntryNotFound", {"X-Repo-Commit": COMMIT})
        if name.endswith(LFS_SUFFIX):
            sha256 = hashlib.sha256(data).hexdigest()
            self.send_response(302)
            self._headers(
                {
                    "X-Repo-Commit": COMMIT,
                    "X-Linked-Etag": f'"{sha256}"',
                    "X-Linked-Size": str(len(data)),
                    "Location": f"{self.fake.cdn_url}/cdn/{sha256}",
                    "Content-Length": "0",
                }
            )
            return None
        etag = {"X-Repo-Commit": COMMIT, "ETag": f'"{git_blob_sha1(data)}"'}
        return self._content(name, repo.served.get(name, data), etag, head)

    def _content(self, name: str, data: bytes, headers: dict[str, str], head: bool) -> None:
        start = 0
        if (wanted := self.headers["Range"]) and (m := re.fullmatch(r"bytes=(\d+)-", wanted)):
            start = int(m[1])
        body = data[start:]
        self.send_response(206 if start else 200)
        if start:
            headers["Content-Range"] = f"bytes {start}-{len(data) - 1}/{len(data)}"
        self._headers({**headers, "Content-Length": str(len(body))})
        if head:
            return
        if name == self.fake.stall_file:
            self.wfile.write(body[: len(body) // 2])
            self.wfile.flush()
            self.fake.hold()
            return
        self.wfile.write(body)

    def _json(self, value: Any) -> None:
        body = json.dumps(value).encode()
        self.send_response(200)
        self._headers({"Content-Type": "application/json", "Content-Length": str(len(body))})
        if self.command != "HEAD":
            self.wfile.write(body)

    def _error(self, status: int, code: str | None, extra: dict[str, str] | None = None) -> None:
        body = json.dumps({"error": code or HTTPStatus(status).phrase}).encode()
        self.send_response(status)
        headers = {"Content-Type": "application/json", "Content-Length": str(len(body))}
        if code is not None:
            headers["X-Error-Code"] = code
        self._headers({**headers, **(extra or {})})
        if self.command != "HEAD":
            self.wfile.write(body)

    def _headers(self, headers: dict[str, str]) -> None:
        for key, value in headers.items():
            self.send_header(key, value)
        self.end_headers()


def _tree_entry(name: str, data: bytes) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "type": "file",
        "oid": git_blob_sha1(data),
        "size": len(data),
        "path": name,
    }
    if name.endswith(LFS_SUFFIX):
        sha256 = hashlib.sha256(data).hexdigest()
        entry["lfs"] = {"oid": sha256, "size": len(data), "pointerSize": _POINTER_SIZE}
    return entry
