"""A reverse proxy in front of the real Keycloak: counts requests, sees every token
that passes (so tests can scan for leaks), and injects faults Keycloak cannot make.
"""

from __future__ import annotations

import base64
import http.client
import json
import socket
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler

from tests.keycloak_fake import Fault, FaultQueue, Request, Server, _basic

__all__ = ["KeycloakProxy"]


class KeycloakProxy:
    def __init__(self, upstream: str) -> None:
        parsed = urllib.parse.urlsplit(upstream)
        self._host, self._port = parsed.hostname or "127.0.0.1", parsed.port or 80
        self.requests: list[Request] = []
        self.issued: list[str] = []
        self.faults = FaultQueue()
        self._lock = threading.Lock()
        self._server = Server(("127.0.0.1", 0), self._handler())
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    def start(self) -> KeycloakProxy:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    @property
    def token_url(self) -> str:
        return f"{self.base_url}/auth/realms/cloud/protocol/openid-connect/token"

    def inject(self, fault: Fault) -> None:
        self.faults.inject(fault)

    def clear_faults(self) -> None:
        self.faults.clear()

    def reset(self) -> None:
        with self._lock:
            self.requests.clear()
        self.faults.clear()

    def count(
        self,
        client_id: str | None = None,
        status: int | None = 200,
        grant_type: str | None = None,
        since: float = 0.0,
    ) -> int:
        with self._lock:
            return sum(
                1
                for r in self.requests
                if (client_id is None or r.client_id == client_id)
                and (status is None or r.answered == status)
                and (grant_type is None or r.grant_type == grant_type)
                and r.at >= since
            )

    def _record(self, at: float, grant: str, client_id: str | None, status: int) -> None:
        with self._lock:
            self.requests.append(Request(at, grant, client_id, status))

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def setup(self) -> None:
                super().setup()
                # Headers and body go out in two writes: without this, Nagle and the
                # client's delayed ACK add 40 ms to every answer.
                self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

            def log_message(self, format: str, *args: object) -> None:
                pass

            def do_POST(self) -> None:
                arrived = time.time()
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                form = urllib.parse.parse_qs(body.decode("utf-8", "replace"))
                grant = form.get("grant_type", [""])[0]
                client_id, _ = _basic(self.headers.get("Authorization", ""))
                fault = proxy.faults.next(client_id)
                if fault is not None:
                    if fault.delay:
                        time.sleep(fault.delay)
                    proxy._record(arrived, grant, client_id, 0 if fault.reset else fault.status)
                    if fault.reset:
                        self.close_connection = True
                        self.connection.close()
                        return
                    self._reply(fault.status, fault.body, fault.headers)
                    return
                conn = http.client.HTTPConnection(proxy._host, proxy._port, timeout=30)
                headers = {k: v for k, v in self.headers.items() if k.lower() != "host"}
                conn.request("POST", self.path, body=body, headers=headers)
                resp = conn.getresponse()
                data = resp.read()
                conn.close()
                proxy._record(arrived, grant, client_id, resp.status)
                if resp.status == 200:
                    try:
                        doc = json.loads(data)
                        with proxy._lock:
                            proxy.issued.extend(
                                v for k, v in doc.items() if k in ("access_token", "refresh_token")
                            )
                    except ValueError:
                        pass
                self._reply(resp.status, data, {"Content-Type": resp.getheader("Content-Type", "")})

            def _reply(self, status: int, body: bytes, headers: dict[str, str]) -> None:
                try:
                    self.send_response(status)
                    for key, value in headers.items():
                        if value:
                            self.send_header(key, value)
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                except (BrokenPipeError, ConnectionResetError):
                    self.close_connection = True

        return Handler


def basic(client_id: str, secret: str) -> str:
    return "Basic " + base64.b64encode(f"{client_id}:{secret}".encode()).decode()
