"""Fixtures: the real ``concord`` binary on ``127.0.0.1:0`` with a temporary data folder
(see ``support.Server``), and a cutting proxy in front of it.

The binary is ``$CONCORD_BIN``, else ``<repo>/target/debug/concord``. Without it the
server tests are skipped, or fail when ``CI`` is set (so that CI cannot pass by skipping).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterator

import pytest

from support import MAX_DOCUMENT_BYTES, TOKENS, Proxy, Server


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """The shared server, authentication off."""
    root = tmp_path_factory.mktemp("concord")
    running = Server(root / "data", ["--max-document-bytes", str(MAX_DOCUMENT_BYTES)])
    yield running
    running.stop()


@pytest.fixture(scope="session")
def auth_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """A server with authentication on, knowing the tokens of ``TOKENS``."""
    root = tmp_path_factory.mktemp("concord-auth")
    tokens = root / "tokens.json"
    tokens.write_text(
        json.dumps(
            {
                "tokens": [
                    {"agent": agent, "token": token, "scopes": scopes}
                    for agent, token, scopes in TOKENS.values()
                ]
            }
        )
    )
    running = Server(root / "data", ["--auth", str(tokens)])
    yield running
    running.stop()


@pytest.fixture
def small_server(tmp_path: Path) -> Iterator[Server]:
    """A server of its own that takes one connection at a time (for 503 refusals)."""
    running = Server(tmp_path / "data", ["--max-connections", "1"])
    yield running
    running.stop()


@pytest.fixture
def url(server: Server) -> str:
    """The shared server's URL."""
    return server.url


@pytest.fixture
def proxy(server: Server) -> Iterator[Proxy]:
    """A TCP proxy in front of the shared server, able to cut its connections."""
    running = Proxy(server.url)
    yield running
    running.close()


@pytest.fixture
def anyio_backend() -> str:
    """The async tests run on asyncio."""
    return "asyncio"
