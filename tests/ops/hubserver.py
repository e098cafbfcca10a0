"""A small local HTTP server speaking the part of the Hub API that `publish` uses, so the real
huggingface_hub client runs its real upload path offline: create repo, refs, tree listing, preupload
(every file answered as a "regular" upload, so content arrives inline in the commit), commit, tag.

It records every request (method, path, Authorization header) and the repo state (files, commits,
tags), which the tests compare with the dry-run folder. It is a stand-in server, not a patch of our
code: nothing in prefdata is replaced."""
from __future__ import annotations

import base64
import hashlib
import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Repo:
    def __init__(self, private: bool):
        self.private = private
        self.files: dict[str, bytes] = {}
        self.commits: list[dict] = []
        self.tags: dict[str, str] = {}

    @property
    def head(self) -> str:
        return self.commits[-1]["oid"] if self.commits else "0" * 40


class FakeHub:
    def __init__(self, token: str):
        self.token = token
        self.repos: dict[str, Repo] = {}
        self.requests: list[dict] = []
        self.lock = threading.Lock()
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep pytest output clean
                pass

            def _send(self, code: int, obj) -> None:
                body = json.dumps(obj).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def _handle(self, method: str) -> None:
                n = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(n) if n else b""
                path = self.path.split("?")[0]
                with hub.lock:
                    hub.requests.append({"method": method, "path": self.path,
                                         "auth": self.headers.get("Authorization")})
                    if self.headers.get("Authorization") != f"Bearer {hub.token}":
                        return self._send(401, {"error": "Invalid credentials in Authorization header"})
                    code, obj = hub.route(method, path, raw)
                self._send(code, obj)

            def do_GET(self):
                self._handle("GET")

            def do_POST(self):
                self._handle("POST")

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()

    def route(self, method: str, path: str, raw: bytes):
        if method == "POST" and path == "/api/repos/create":
            body = json.loads(raw)
            repo_id = f"{body['organization']}/{body['name']}"
            if repo_id in self.repos:
                return 409, {"error": "You already created this dataset repo", "url": f"{self.url}/datasets/{repo_id}"}
            self.repos[repo_id] = Repo(body.get("visibility") == "private")
            return 200, {"url": f"{self.url}/datasets/{repo_id}"}
        if method == "POST" and path == "/api/validate-yaml":
            # the client checks a README's metadata before committing; accept what parses as YAML mapping
            import yaml
            body = json.loads(raw)
            ok = isinstance(yaml.safe_load(body.get("content", "").split("---\n")[1]), dict)
            return (200, {}) if ok else (400, {"error": "invalid YAML metadata"})
        m = re.fullmatch(r"/api/datasets/([^/]+/[^/]+)/(refs|tree|preupload|commit|tag)(?:/(.*))?", path)
        if not m or m.group(1) not in self.repos:
            return 404, {"error": f"Repository not found: {path}"}
        repo, what = self.repos[m.group(1)], m.group(2)
        if what == "refs":
            return 200, {"branches": [{"name": "main", "ref": "refs/heads/main", "targetCommit": repo.head}],
                         "converts": [], "tags": [{"name": t, "ref": f"refs/tags/{t}", "targetCommit": c}
                                                  for t, c in repo.tags.items()]}
        if what == "tree":
            return 200, [{"type": "file", "path": p, "size": len(b), "oid": hashlib.sha1(b).hexdigest()}
                         for p, b in sorted(repo.files.items())]
        if what == "preupload":
            files = json.loads(raw)["files"]
            return 200, {"files": [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False}
                                   for f in files]}
        if what == "commit":
            lines = [json.loads(x) for x in raw.splitlines() if x.strip()]
            header = next(x["value"] for x in lines if x["key"] == "header")
            added, deleted = [], []
            for x in lines:
                if x["key"] == "file":
                    repo.files[x["value"]["path"]] = base64.b64decode(x["value"]["content"])
                    added.append(x["value"]["path"])
                elif x["key"] == "deletedFile":
                    repo.files.pop(x["value"]["path"], None)
                    deleted.append(x["value"]["path"])
                elif x["key"] != "header":
                    return 400, {"error": f"unsupported commit operation {x['key']}"}
            oid = hashlib.sha1(f"{repo.head}{header}{added}{deleted}".encode()).hexdigest()
            repo.commits.append({"oid": oid, "summary": header["summary"], "added": added, "deleted": deleted})
            return 200, {"commitUrl": f"{self.url}/datasets/{m.group(1)}/commit/{oid}", "commitOid": oid}
        if what == "tag":
            body = json.loads(raw)
            if body["tag"] in repo.tags:
                return 409, {"error": f"tag {body['tag']} already exists"}
            repo.tags[body["tag"]] = m.group(3)
            return 200, {}
        return 404, {"error": "not found"}
