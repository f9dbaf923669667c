"""OTLP receivers for the export tests: ddapm-test-agent (a real one, in its own virtualenv) and a
small scripted one on loopback.

ddapm-test-agent pins an older opentelemetry-proto than flowtape's, so it lives in
`.venv-testagent` at the repository root, created once (pip install from PyPI) and reused; the
test suite makes it on a fresh clone. It accepts OTLP/HTTP protobuf (gzip too) on its OTLP port
and returns what it received, decoded, at /test/session/traces and /test/session/metrics of that
port (ids as base64, protobuf's JSON form of bytes).
"""

from __future__ import annotations

import gzip
import http.server
import json
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path
from typing import Callable

import pytest
from ebpf_support import in_ci

ROOT = Path(__file__).resolve().parent.parent
AGENT_VENV = ROOT / ".venv-testagent"
AGENT_PACKAGE = "ddapm-test-agent==1.69.1"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _unavailable(why: str) -> None:
    if in_ci():
        pytest.fail(why, pytrace=False)
    pytest.skip(why)


def agent_executable() -> Path:
    """The ddapm-test-agent command, installing it into .venv-testagent the first time."""
    exe = AGENT_VENV / "bin" / "ddapm-test-agent"
    marker = AGENT_VENV / f".installed-{AGENT_PACKAGE}"
    if exe.exists() and marker.exists():
        return exe
    try:
        if not (AGENT_VENV / "bin" / "python").exists():
            subprocess.run([sys.executable, "-m", "venv", str(AGENT_VENV)], check=True, capture_output=True, timeout=300)
        subprocess.run([str(AGENT_VENV / "bin" / "python"), "-m", "pip", "install", "-q", AGENT_PACKAGE], check=True, capture_output=True, timeout=900)
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as e:
        err = getattr(e, "stderr", b"") or b""
        _unavailable(f"could not install {AGENT_PACKAGE} into {AGENT_VENV}: {err.decode(errors='replace').strip().splitlines()[-1:] or e}")
    marker.touch()
    return exe


class Agent:
    """A running ddapm-test-agent; `url` is its OTLP/HTTP base URL."""

    def __init__(self) -> None:
        exe = agent_executable()
        self.otlp_port = _free_port()
        self.url = f"http://127.0.0.1:{self.otlp_port}"
        args = [str(exe), "--host", "127.0.0.1", "--port", str(_free_port()), "--otlp-http-port", str(self.otlp_port), "--otlp-grpc-port", str(_free_port())]
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=str(AGENT_VENV))
        deadline = time.time() + 60
        while time.time() < deadline:
            if self.proc.poll() is not None:
                _unavailable(f"ddapm-test-agent exited: {self.proc.stderr.read().decode(errors='replace')[-300:]}")
            try:
                self.get("/test/session/traces", "probe")
                return
            except OSError:
                time.sleep(0.2)
        self.stop()
        _unavailable("ddapm-test-agent did not answer within 60 s")

    def get(self, path: str, token: str) -> list:
        # 120 s: the agent turns a session of tens of thousands of spans into JSON slowly on a loaded machine (30 s timed out at load 10)
        with urllib.request.urlopen(f"{self.url}{path}?test_session_token={token}", timeout=120) as r:
            return json.load(r)

    def traces(self, token: str) -> list[dict]:
        """Every TracesData the agent received with this session token (one per request)."""
        return self.get("/test/session/traces", token)

    def metrics(self, token: str) -> list[dict]:
        return self.get("/test/session/metrics", token)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()


class ScriptedReceiver:
    """An OTLP/HTTP receiver on loopback whose answers a test writes: `answer(path, body, n)` ->
    (status, headers, body), n counting the requests with that body. It keeps every request
    (decompressed) and, separately, the bodies it answered with a 2xx."""

    def __init__(self, answer: Callable[[str, bytes, int], tuple[int, dict, bytes]]):
        self.requests: list[tuple[str, dict, bytes]] = []
        self.accepted: list[tuple[str, bytes]] = []
        seen: dict[bytes, int] = {}
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:  # noqa: N802 (http.server's name)
                raw = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                body = gzip.decompress(raw) if self.headers.get("Content-Encoding") == "gzip" else raw
                outer.requests.append((self.path, dict(self.headers), body))
                seen[body] = seen.get(body, 0) + 1
                status, headers, reply = answer(self.path, body, seen[body])
                if 200 <= status < 300:
                    outer.accepted.append((self.path, body))
                self.send_response(status)
                for k, v in {"Content-Type": "application/x-protobuf", **headers}.items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

            def log_message(self, *a) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
