"""Run untrusted Python in pysandbox's disposable sandboxes.

- ``run(code | path=...)``: one run through the local ``pysandbox`` binary (``--json``).
- ``Client(url, token)``: a ``pysandbox serve`` server: ``run()``, ``health()`` and
  ``session()`` for state kept between executions (``run_code()`` returns an
  ``Execution`` with E2B's field names).

Standard library only. Errors raise ``PySandboxError``.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Optional, Sequence, Union

__all__ = [
    "run",
    "Client",
    "Session",
    "Report",
    "Execution",
    "Result",
    "Logs",
    "ExecutionError",
    "PySandboxError",
    "SessionExpired",
]

__version__ = "0.1.0"


class PySandboxError(Exception):
    """pysandbox refused or could not run something; ``status`` is the HTTP status (or
    the CLI's exit status) when there is one."""

    def __init__(self, message: str, status: Optional[int] = None):
        super().__init__(message)
        self.message = message
        self.status = status


class SessionExpired(PySandboxError):
    """The session ended (idle timeout, lifetime, deleted, or its interpreter died)."""


@dataclass
class Report:
    """The report of one run (``pysandbox run --json``, schema 1)."""

    status: str
    exit_code: Optional[int]
    signal: Optional[int]
    stdout: str
    stderr: str
    wall_ms: int
    cpu_ms: int
    id: str
    error: Optional[str]
    warnings: List[str]
    raw: Dict[str, Any] = field(repr=False)

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    @property
    def timed_out(self) -> bool:
        return self.status == "timeout"

    @classmethod
    def from_json(cls, d: Dict[str, Any]) -> "Report":
        return cls(
            status=d["status"],
            exit_code=d.get("exit_code"),
            signal=d.get("signal"),
            stdout=d["stdout"]["text"],
            stderr=d["stderr"]["text"],
            wall_ms=d.get("wall_ms", 0),
            cpu_ms=d.get("cpu_ms", 0),
            id=d.get("id", ""),
            error=d.get("error"),
            warnings=list(d.get("warnings", [])),
            raw=d,
        )


@dataclass
class Result:
    """One rich result (E2B's ``Result``): the last expression's value, a display()
    call, or a matplotlib figure."""

    text: Optional[str] = None
    png: Optional[str] = None
    html: Optional[str] = None
    json: Any = None
    is_main_result: bool = False


@dataclass
class Logs:
    stdout: List[str] = field(default_factory=list)
    stderr: List[str] = field(default_factory=list)


@dataclass
class ExecutionError:
    name: str
    value: str
    traceback: str


@dataclass
class Execution:
    """What one execution in a session did, with E2B's field names."""

    results: List[Result]
    logs: Logs
    error: Optional[ExecutionError]
    execution_count: int

    @property
    def text(self) -> Optional[str]:
        """The text of the last expression's value, if any."""
        for r in self.results:
            if r.is_main_result:
                return r.text
        return None

    @classmethod
    def from_json(cls, d: Dict[str, Any]) -> "Execution":
        err = d.get("error")
        return cls(
            results=[
                Result(
                    text=r.get("text"),
                    png=r.get("png"),
                    html=r.get("html"),
                    json=r.get("json"),
                    is_main_result=bool(r.get("is_main_result")),
                )
                for r in d.get("results", [])
            ],
            logs=Logs(stdout=list(d["logs"]["stdout"]), stderr=list(d["logs"]["stderr"])),
            error=ExecutionError(err["name"], err["value"], err["traceback"]) if err else None,
            execution_count=int(d.get("execution_count", 0)),
        )


def _binary(binary: Optional[str]) -> str:
    b = binary or os.environ.get("PYSANDBOX_BIN") or shutil.which("pysandbox")
    if not b:
        raise PySandboxError(
            "the pysandbox binary was not found: install it, put it on PATH, or set PYSANDBOX_BIN"
        )
    return b


def _size(v: Union[int, str]) -> str:
    return str(v)


def run(
    code: Optional[str] = None,
    *,
    path: Optional[str] = None,
    args: Sequence[str] = (),
    stdin: Union[str, bytes, None] = None,
    env: Optional[Mapping[str, str]] = None,
    timeout: Union[float, str, None] = None,
    memory: Union[int, str, None] = None,
    pids: Optional[int] = None,
    network: bool = False,
    image: Optional[str] = None,
    data: Optional[str] = None,
    binary: Optional[str] = None,
) -> Report:
    """Runs ``code`` (or the script at ``path``) in a fresh sandbox through the local
    pysandbox binary and returns its report. Without ``data`` the run sees no host
    files; with it, that folder is the read-only working directory (``output/`` is
    writable)."""
    if (code is None) == (path is None):
        raise ValueError("give either code or path")
    cmd = [_binary(binary), "run", "--json"]
    if timeout is not None:
        cmd += ["--timeout", timeout if isinstance(timeout, str) else "%dms" % int(timeout * 1000)]
    if memory is not None:
        cmd += ["--memory", _size(memory)]
    if pids is not None:
        cmd += ["--pids", str(pids)]
    if network:
        cmd.append("--network")
    if image:
        cmd += ["--image", image]
    for k, v in (env or {}).items():
        cmd += ["-e", "%s=%s" % (k, v)]
    cmd += ["--data", data] if data else ["--no-fs"]
    cmd += ["--code", code] if code is not None else [path]  # type: ignore[list-item]
    cmd += ["--", *args]
    if isinstance(stdin, str):
        stdin = stdin.encode()
    p = subprocess.run(cmd, input=stdin or b"", capture_output=True)
    try:
        report = Report.from_json(json.loads(p.stdout))
    except (ValueError, KeyError):
        raise PySandboxError(
            (p.stderr.decode(errors="replace").strip() or "pysandbox gave no report"),
            p.returncode,
        )
    if report.status == "sandbox_error":
        raise PySandboxError(report.error or "the sandbox failed", p.returncode)
    return report


class Client:
    """A ``pysandbox serve`` server."""

    def __init__(self, url: str = "http://127.0.0.1:2000", token: Optional[str] = None, timeout: float = 120):
        self.url = url.rstrip("/")
        self.token = token
        self.timeout = timeout

    def _call(self, method: str, path: str, body: Any = None, raw: bool = False) -> Any:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.url + path, data=data, method=method)
        if data is not None:
            req.add_header("Content-Type", "application/json")
        if self.token:
            req.add_header("Authorization", "Bearer " + self.token)
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                payload = resp.read()
        except urllib.error.HTTPError as e:
            text = e.read().decode(errors="replace")
            try:
                message = json.loads(text)["message"]
            except (ValueError, KeyError, TypeError):
                message = text or e.reason
            cls = SessionExpired if e.code == 410 else PySandboxError
            raise cls(message, e.code) from None
        except urllib.error.URLError as e:
            raise PySandboxError("cannot reach %s: %s" % (self.url, e.reason)) from None
        if raw:
            return payload
        return json.loads(payload) if payload else None

    def health(self) -> Dict[str, Any]:
        return self._call("GET", "/v1/health")

    def run(
        self,
        code: Optional[str] = None,
        *,
        files: Optional[Mapping[str, Union[str, bytes]]] = None,
        script: Optional[str] = None,
        args: Sequence[str] = (),
        stdin: str = "",
        env: Optional[Mapping[str, str]] = None,
        timeout: Optional[float] = None,
        memory: Optional[int] = None,
        pids: Optional[int] = None,
    ) -> Report:
        """One run from the server's warm pool (``POST /v1/run``)."""
        body: Dict[str, Any] = {"args": list(args), "stdin": stdin, "env": dict(env or {})}
        if code is not None:
            body["code"] = code
        if files:
            body["files"] = [_file(n, c) for n, c in files.items()]
        if script:
            body["script"] = script
        if timeout is not None:
            body["timeout_ms"] = int(timeout * 1000)
        if memory is not None:
            body["memory_bytes"] = int(memory)
        if pids is not None:
            body["pids"] = int(pids)
        return Report.from_json(self._call("POST", "/v1/run", body))

    def session(self, idle_timeout: Optional[float] = None, lifetime: Optional[float] = None) -> "Session":
        body: Dict[str, Any] = {}
        if idle_timeout is not None:
            body["idle_timeout_s"] = idle_timeout
        if lifetime is not None:
            body["lifetime_s"] = lifetime
        d = self._call("POST", "/v1/sessions", body)
        return Session(self, d["id"], d["expires_at"])


def _file(name: str, content: Union[str, bytes]) -> Dict[str, str]:
    if isinstance(content, bytes):
        return {"name": name, "content": base64.b64encode(content).decode(), "encoding": "base64"}
    return {"name": name, "content": content}


class Session:
    """A session on a server: one sandbox whose interpreter keeps its globals."""

    def __init__(self, client: Client, id: str, expires_at: float):
        self.client = client
        self.id = id
        self.expires_at = expires_at
        self.closed = False

    def run_code(self, code: str, timeout: Optional[float] = None, globals: Optional[Mapping[str, Any]] = None) -> Execution:
        body: Dict[str, Any] = {"code": code}
        if timeout is not None:
            body["timeout_s"] = timeout
        if globals:
            body["globals"] = dict(globals)
        d = self.client._call("POST", "/v1/sessions/%s/execute" % self.id, body)
        self.expires_at = d.get("expires_at", self.expires_at)
        return Execution.from_json(d)

    def put_file(self, path: str, content: Union[str, bytes]) -> None:
        f = _file(path, content)
        self.client._call(
            "POST",
            "/v1/sessions/%s/files" % self.id,
            {"path": path, "content": f["content"], "encoding": f.get("encoding", "utf8")},
        )

    def get_file(self, path: str) -> bytes:
        return self.client._call("GET", "/v1/sessions/%s/files/%s" % (self.id, path), raw=True)

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            try:
                self.client._call("DELETE", "/v1/sessions/%s" % self.id)
            except SessionExpired:
                pass

    def __enter__(self) -> "Session":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
