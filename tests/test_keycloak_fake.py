"""The fake token server takes a burst of new connections the way Keycloak does.

Keycloak (Quarkus on Netty) listens with the system's ``somaxconn``; a listener with
``socketserver``'s default backlog of 5 overflows when a client opens 16 connections at
once: the kernel answers the extra handshakes with SYN cookies and resets connections
whose cookie it cannot match (``ConnectionResetError`` on a token request).
"""

from __future__ import annotations

import base64
import concurrent.futures
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import pytest
import urllib3

from tests.keycloak_fake import FakeKeycloak, Server

BURST = 32


def accept_queue(port: int) -> int:
    """Connections the kernel holds for the loopback listener on ``port``, not yet
    accepted (``/proc/net/tcp`` reports a listener's accept queue as rx_queue)."""
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        address, local_port = fields[1].split(":")
        if (
            fields[3] == "0A"
            and int(local_port, 16) == port
            and address
            in (
                "0100007F",
                "7F000001",
            )
        ):
            return int(fields[4].split(":")[1], 16)
    raise AssertionError(f"no listener on 127.0.0.1:{port}")


@pytest.mark.skipif(not Path("/proc/net/tcp").exists(), reason="reads Linux's /proc/net/tcp")
def test_listener_queues_a_burst_of_connections_while_busy() -> None:
    server = FakeKeycloak(refresh_tokens=False)  # listening, not accepting yet: busy
    server.add_client("c", "s")
    clients = [socket.socket() for _ in range(BURST)]
    try:
        for client in clients:
            client.setblocking(False)
            client.connect_ex(("127.0.0.1", server.port))
        deadline = time.monotonic() + 2
        while accept_queue(server.port) < BURST and time.monotonic() < deadline:
            time.sleep(0.02)
        assert accept_queue(server.port) == BURST
        server.start()
        basic = base64.b64encode(b"c:s").decode()
        request = (
            "POST /auth/realms/cloud/protocol/openid-connect/token HTTP/1.1\r\n"
            "Host: 127.0.0.1\r\nContent-Type: application/x-www-form-urlencoded\r\n"
            f"Authorization: Basic {basic}\r\nContent-Length: 29\r\n\r\n"
            "grant_type=client_credentials"
        ).encode()
        for client in clients:  # each queued connection is served once accepted
            client.setblocking(True)
            client.settimeout(10)
            client.sendall(request)
            assert client.recv(12) == b"HTTP/1.1 200"
    finally:
        for client in clients:
            client.close()
        server.stop()


def burst(token_url: str) -> list[int]:
    """BURST token requests at once, each on a new connection; their statuses."""
    pool = urllib3.PoolManager(maxsize=BURST, retries=False)
    start = threading.Barrier(BURST)

    def token(i: int) -> int:
        basic = base64.b64encode(f"c-{i}:s-{i}".encode()).decode()
        start.wait()
        return pool.request(
            "POST",
            token_url,
            body=b"grant_type=client_credentials",
            headers={
                "Content-Type": "application/x-www-form-urlencoded",
                "Authorization": f"Basic {basic}",
            },
            timeout=30,
        ).status

    try:
        with concurrent.futures.ThreadPoolExecutor(BURST) as workers:
            return list(workers.map(token, range(BURST)))
    finally:
        pool.clear()


def test_a_burst_of_token_requests_on_new_connections_is_answered() -> None:
    with FakeKeycloak(refresh_tokens=False) as server:
        for i in range(BURST):
            server.add_client(f"c-{i}", f"s-{i}")
        for _ in range(3):
            assert burst(server.token_url) == [200] * BURST


def test_a_client_resetting_its_connection_is_no_traceback(
    capsys: pytest.CaptureFixture[str],
) -> None:
    server = Server(("127.0.0.1", 0), BaseHTTPRequestHandler)
    try:
        for error in (ConnectionResetError(104, "reset"), BrokenPipeError(32, "pipe")):
            try:
                raise error
            except OSError:
                server.handle_error(None, ("127.0.0.1", 1))
        assert capsys.readouterr().err == ""
        try:
            raise ValueError("a bug in the handler")
        except ValueError:
            server.handle_error(None, ("127.0.0.1", 1))
        assert "ValueError: a bug in the handler" in capsys.readouterr().err
    finally:
        server.server_close()
