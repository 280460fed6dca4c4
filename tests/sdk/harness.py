"""Helpers for the SDK suite: run `backstop serve` as a child process, tiny stub "cloud" servers
on loopback, an SSE reader. Only the standard library and httpx (a dependency of the SDKs)."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[2]
API_KEY = "sk-backstop-sdk-test"
DEFAULT_MODEL = REPO / "models" / "SmolLM2-135M-Instruct.Q4_1.gguf"
LISTEN_RE = re.compile(r"backstop: listening on http://([0-9.]+):(\d+)")
# Seconds: a debug build loads slowly; a release build is ready in about a second.
LISTEN_TIMEOUT = 60
READY_TIMEOUT = 180
STOP_TIMEOUT = 5


def backstop_bin() -> Path:
    """BACKSTOP_BIN, else the newer of the release and debug builds (a stale release build
    next to a fresh debug one must not be picked)."""
    env = os.environ.get("BACKSTOP_BIN")
    if env:
        return Path(env)
    found = [
        p
        for p in (REPO / "target" / "release" / "backstop", REPO / "target" / "debug" / "backstop")
        if p.is_file()
    ]
    if not found:
        raise RuntimeError("no backstop binary: build it (cargo build) or set BACKSTOP_BIN")
    return max(found, key=lambda p: p.stat().st_mtime)


def model_path() -> Path:
    return Path(os.environ.get("BACKSTOP_SDK_MODEL", DEFAULT_MODEL))


class Backstop:
    """One `backstop serve` child on 127.0.0.1 with a port of its own choosing."""

    def __init__(self, *extra_args: str):
        self.args = [
            str(backstop_bin()),
            "serve",
            "-m",
            str(model_path()),
            "--host",
            "127.0.0.1",
            "--port",
            "0",
            "-t",
            "2",
            "-c",
            "2048",
            *extra_args,
        ]
        self.lines: list[str] = []
        self._listening = threading.Event()
        self.host = self.port = None
        # Observations made while starting, checked by tests.
        self.livez_status_at_listen: int | None = None
        self.health_status_at_listen: int | None = None
        self.loading_responses: list[httpx.Response] = []
        self.ready_response: httpx.Response | None = None
        self.exit_code: int | None = None
        self.stop_seconds: float | None = None

        self.proc = subprocess.Popen(
            self.args,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            errors="replace",
        )
        self._reader = threading.Thread(target=self._read_stderr, daemon=True)
        self._reader.start()
        try:
            self._wait_ready()
        except BaseException:
            self.stop(check=False)
            raise

    def _read_stderr(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.lines.append(line.rstrip("\n"))
            m = LISTEN_RE.search(line)
            if m and not self._listening.is_set():
                self.host, self.port = m.group(1), int(m.group(2))
                self._listening.set()

    def log(self) -> str:
        return "\n".join(self.lines[-60:])

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + LISTEN_TIMEOUT
        while not self._listening.wait(0.05):
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"{' '.join(self.args)} exited with {self.proc.returncode} before listening:\n{self.log()}"
                )
            if time.monotonic() > deadline:
                raise RuntimeError(f"no 'backstop: listening on' line in {LISTEN_TIMEOUT} s:\n{self.log()}")
        with httpx.Client(timeout=10, trust_env=False) as c:
            self.livez_status_at_listen = c.get(self.url + "/livez").status_code
            self.health_status_at_listen = c.get(self.url + "/health").status_code
            deadline = time.monotonic() + READY_TIMEOUT
            while True:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"backstop exited with {self.proc.returncode} while loading:\n{self.log()}")
                r = c.get(self.url + "/ready")
                if r.status_code == 200:
                    self.ready_response = r
                    return
                self.loading_responses.append(r)
                if time.monotonic() > deadline:
                    raise RuntimeError(f"GET /ready not 200 in {READY_TIMEOUT} s (last {r.status_code}):\n{self.log()}")
                time.sleep(0.1)

    def stop(self, check: bool = True) -> None:
        """SIGTERM; with check, raise AssertionError unless it exits within STOP_TIMEOUT s."""
        if self.proc.poll() is None:
            t0 = time.monotonic()
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                if check:
                    raise AssertionError(
                        f"backstop did not exit within {STOP_TIMEOUT} s of SIGTERM:\n{self.log()}"
                    )
            self.stop_seconds = time.monotonic() - t0
        self.exit_code = self.proc.returncode
        self._reader.join(2)


def closed_port() -> int:
    """A loopback port that nothing listens on (bound, then released)."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


class Stub:
    """A stub "cloud" on loopback. mode: 'anthropic_529' answers every POST with Anthropic's
    529 overloaded_error, 'openai_503' with OpenAI's 503, 'hang' accepts and never answers
    (until the stub is closed)."""

    def __init__(self, mode: str):
        self.mode = mode
        self.hits: list[str] = []
        self.closing = threading.Event()
        stub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # quiet
                pass

            def do_GET(self):
                self.do_POST()

            def do_POST(self):
                n = int(self.headers.get("Content-Length") or 0)
                if n:
                    self.rfile.read(n)
                stub.hits.append(self.path)
                if stub.mode == "hang":
                    stub.closing.wait(60)
                    self.close_connection = True
                    return
                if stub.mode == "anthropic_529":
                    status = 529
                    body = {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}
                else:
                    status = 503
                    body = {
                        "error": {
                            "message": "The server is overloaded, please try again later.",
                            "type": "server_error",
                            "param": None,
                            "code": None,
                        }
                    }
                data = json.dumps(body).encode()
                self.send_response(status, "Overloaded" if status == 529 else None)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.send_header("Retry-After", "1")
                self.end_headers()
                self.wfile.write(data)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def close(self) -> None:
        self.closing.set()
        self.server.shutdown()
        self.server.server_close()


def sse_events(lines) -> list[tuple[str | None, str]]:
    """(event name, data) pairs from an iterator of SSE lines."""
    events = []
    name, data = None, []
    for line in lines:
        if line == "":
            if data or name:
                events.append((name, "\n".join(data)))
            name, data = None, []
        elif line.startswith(":"):
            continue
        elif line.startswith("event:"):
            name = line[6:].strip()
        elif line.startswith("data:"):
            data.append(line[5:].lstrip(" "))
    if data or name:
        events.append((name, "\n".join(data)))
    return events


FAKE_CLOUD_RE = re.compile(r"fake_cloud: listening on http://([0-9.]+):(\d+)")


def fake_cloud_bin() -> Path:
    """FAKE_CLOUD_BIN, else the newer of the release and debug builds of the `fake_cloud`
    example (built by `cargo test --workspace --no-run`, or `cargo build --examples`)."""
    env = os.environ.get("FAKE_CLOUD_BIN")
    if env:
        if not Path(env).is_file():
            raise RuntimeError(f"FAKE_CLOUD_BIN={env} is not a file")
        return Path(env)
    found = [
        p
        for p in (
            REPO / "target" / "release" / "examples" / "fake_cloud",
            REPO / "target" / "debug" / "examples" / "fake_cloud",
        )
        if p.is_file()
    ]
    if not found:
        raise RuntimeError(
            "no fake_cloud binary in target/{release,debug}/examples: build it with "
            "`cargo test --workspace --no-run` (or `cargo build --examples`), or set FAKE_CLOUD_BIN"
        )
    return max(found, key=lambda p: p.stat().st_mtime)


class FakeCloud:
    """The scripted cloud (crates/server/examples/fake_cloud.rs) as a child process on loopback.
    `set(scenario)` applies to every following request; `report()` is its GET /_control (request
    count and what the last request carried)."""

    def __init__(self):
        self.proc = subprocess.Popen(
            [str(fake_cloud_bin()), "--port", "0"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            errors="replace",
        )
        self.lines: list[str] = []
        self._listening = threading.Event()
        self.port = None
        self._reader = threading.Thread(target=self._read_stderr, daemon=True)
        self._reader.start()
        deadline = time.monotonic() + 10
        while not self._listening.wait(0.05):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError("fake_cloud did not start listening:\n" + "\n".join(self.lines))
        self.http = httpx.Client(base_url=self.url, timeout=10, trust_env=False)

    def _read_stderr(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.lines.append(line.rstrip("\n"))
            m = FAKE_CLOUD_RE.search(line)
            if m and not self._listening.is_set():
                self.port = int(m.group(2))
                self._listening.set()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def set(self, scenario: str, reset: bool = False) -> dict:
        params = {"scenario": scenario}
        if reset:
            params["reset"] = "1"
        r = self.http.post("/_control", params=params)
        r.raise_for_status()
        return r.json()

    def report(self) -> dict:
        r = self.http.get("/_control")
        r.raise_for_status()
        return r.json()

    @property
    def requests(self) -> int:
        return self.report()["requests"]

    def stop(self) -> None:
        if getattr(self, "http", None) is not None:
            self.http.close()
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        self._reader.join(2)
