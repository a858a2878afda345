"""Helpers of the test suite: the real server as a subprocess, and a TCP proxy that can
cut connections (to test retries and resumption over real sockets).
"""

from __future__ import annotations

import os
import selectors
import socket
import subprocess
import threading
import time
from pathlib import Path
from typing import List, Tuple
from urllib.parse import urlsplit

import pytest

REPO = Path(__file__).resolve().parents[2]
LISTENING = "concord listening on "
START_TIMEOUT = 60.0
STOP_TIMEOUT = 15.0

#: Tokens of the auth server: an admin, a reader of every document, a writer of every one.
TOKENS = {
    "admin": ("ops", "admin-token-0123456789abcdef", ["admin"]),
    "reader": ("reviewer", "reader-token-0123456789abcdef", ["read:*"]),
    "writer": ("planner", "writer-token-0123456789abcdef", ["write:*"]),
}

#: The largest document the shared server takes, so that a test can pass it cheaply.
MAX_DOCUMENT_BYTES = 64 * 1024


def binary() -> Path:
    """The server binary to test."""
    return Path(os.environ.get("CONCORD_BIN") or REPO / "target" / "debug" / "concord")


class Server:
    """One running server process; ``url`` is where it listens."""

    def __init__(self, data: Path, args: List[str]) -> None:
        path = binary()
        if not path.exists():
            reason = f"no server binary at {path} (build it, or set CONCORD_BIN)"
            if os.environ.get("CI"):
                pytest.fail(reason)
            pytest.skip(reason)
        data.mkdir(parents=True, exist_ok=True)
        self.log_path = data.parent / f"{data.name}.log"
        self._log = open(self.log_path, "wb")
        self.process = subprocess.Popen(
            [str(path), "--addr", "127.0.0.1:0", "--data", str(data), *args],
            stdout=subprocess.PIPE,
            stderr=self._log,
        )
        try:
            self.url = self._listening()
        except BaseException:
            self.stop()
            raise

    def _listening(self) -> str:
        """Reads stdout up to the line that names the address, within START_TIMEOUT."""
        assert self.process.stdout is not None
        deadline = time.monotonic() + START_TIMEOUT
        buffer = b""
        with selectors.DefaultSelector() as selector:
            selector.register(self.process.stdout, selectors.EVENT_READ)
            while b"\n" not in buffer:
                left = deadline - time.monotonic()
                if left <= 0 or not selector.select(left):
                    raise RuntimeError(
                        f"the server did not start in {START_TIMEOUT} s: {self.log()}"
                    )
                chunk = os.read(self.process.stdout.fileno(), 4096)
                if not chunk:
                    raise RuntimeError(f"the server exited at start: {self.log()}")
                buffer += chunk
        line = buffer.split(b"\n", 1)[0].decode()
        if not line.startswith(LISTENING):
            raise RuntimeError(f"unexpected first line {line!r}")
        return line[len(LISTENING) :].strip()

    def log(self) -> str:
        """The server's log so far (stderr), for a failure message."""
        self._log.flush()
        return self.log_path.read_text(errors="replace")[-4000:]

    def stop(self) -> None:
        """SIGTERM (a graceful shutdown), then SIGKILL if it takes too long."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(STOP_TIMEOUT)
        if self.process.stdout is not None:
            self.process.stdout.close()
        self._log.close()


def token(name: str) -> str:
    """The secret of one of ``TOKENS``."""
    return TOKENS[name][1]


class Proxy:
    """A TCP proxy in front of a server, for failures over real sockets: :meth:`cut`
    closes every connection it carries, :meth:`drop_next_response` lets the next request
    reach the server but closes its connection instead of passing the answer back.
    ``requests`` holds what each connection sent, in order of connection."""

    def __init__(self, target_url: str) -> None:
        parts = urlsplit(target_url)
        self._target: Tuple[str, int] = (parts.hostname or "127.0.0.1", parts.port or 80)
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self._listener.getsockname()[1]}"
        self._lock = threading.Lock()
        self._pairs: List[Tuple[socket.socket, socket.socket]] = []
        self._drop = 0
        self.dropped = 0
        """How many answers were swallowed."""
        self.requests: List[bytes] = []
        """The bytes each connection sent (its requests), by connection."""
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return  # closed
            try:
                upstream = socket.create_connection(self._target, timeout=10)
                upstream.settimeout(None)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._pairs.append((client, upstream))
                index = len(self.requests)
                self.requests.append(b"")
            for src, dst, up in ((client, upstream, True), (upstream, client, False)):
                threading.Thread(target=self._pump, args=(src, dst, index, up), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, index: int, up: bool) -> None:
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    return
                with self._lock:
                    if up:
                        self.requests[index] += data
                    elif self._drop > 0:
                        self._drop -= 1
                        self.dropped += 1
                        return  # the answer is lost with the connection
                dst.sendall(data)
        except OSError:
            return
        finally:
            self._close_pair(src, dst)

    @staticmethod
    def _close_pair(*sockets: socket.socket) -> None:
        for sock in sockets:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            sock.close()

    def drop_next_response(self) -> None:
        """The next answer from the server is not passed on: its connection is closed."""
        with self._lock:
            self._drop += 1

    def cut(self) -> int:
        """Closes every connection open now; returns how many there were."""
        with self._lock:
            pairs, self._pairs = self._pairs, []
        for pair in pairs:
            self._close_pair(*pair)
        return len(pairs)

    def sent(self, index: int) -> str:
        """What connection ``index`` sent, as text."""
        with self._lock:
            return self.requests[index].decode("latin-1")

    def close(self) -> None:
        """Stops accepting and closes every connection."""
        try:
            self._listener.shutdown(socket.SHUT_RDWR)  # wakes the thread blocked in accept
        except OSError:
            pass
        self._listener.close()
        self.cut()


def holding_connection(url: str, timeout: float = 10.0) -> socket.socket:
    """A connection to ``url`` that has been answered once (so the server counts it) and
    stays open until closed."""
    parts = urlsplit(url)
    sock = socket.create_connection((parts.hostname, parts.port), timeout=timeout)
    sock.sendall(f"GET /healthz HTTP/1.1\r\nHost: {parts.netloc}\r\n\r\n".encode())
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = sock.recv(4096)
        if not chunk:
            raise RuntimeError("the server closed the connection")
        head += chunk
    if not head.startswith(b"HTTP/1.1 200"):
        raise RuntimeError(f"unexpected answer {head[:80]!r}")
    return sock
