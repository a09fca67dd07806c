"""Session-wide fixtures shared by the integration and scaling packages: one multi-node Ray cluster and Serve."""

from __future__ import annotations

import socket

import pytest


def pytest_terminal_summary(terminalreporter):
    from tests.session_facts import SESSION_FACTS

    if SESSION_FACTS:
        terminalreporter.section("platform")
        for key, value in SESSION_FACTS.items():
            terminalreporter.write_line(f"{key}: {value}")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def ray_cluster():
    """Ray (head + three accelerator-labelled workers) and Serve, started once for the session."""
    from gemma_serving.local_cluster import start_local_cluster
    from ray import serve

    cluster = start_local_cluster()
    serve.start(http_options={"host": "127.0.0.1", "port": free_port()}, proxy_location="HeadOnly")
    yield cluster
    serve.shutdown()
    cluster.shutdown()
