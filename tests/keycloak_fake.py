"""A small Keycloak-compatible token server for tests: the fast tier.

It serves ``/auth/realms/<realm>/protocol/openid-connect/token`` over real loopback
HTTP (or HTTPS with a test CA), answers like Keycloak 26 (status codes and error
bodies recorded from the real server, see ``tests/test_real_keycloak.py``), counts
every request, and can inject faults that Keycloak cannot produce.

Run alone: ``python -m tests.keycloak_fake --port 8180 --client demo:secret``.
"""

from __future__ import annotations

import base64
import dataclasses
import email.utils
import json
import secrets
import socket
import ssl
import sys
import threading
import time
import urllib.parse
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

__all__ = ["Client", "FakeKeycloak", "Fault", "Request", "Server"]

INVALID_CREDENTIALS = "Invalid client or Invalid client credentials"


@dataclasses.dataclass
class Client:
    client_id: str
    secret: str
    enabled: bool = True
    service_accounts: bool = True


@dataclasses.dataclass
class Fault:
    """What to answer instead of a token. ``times`` is how many requests it hits (None: all)."""

    status: int = 503
    body: bytes = b""
    headers: dict[str, str] = dataclasses.field(default_factory=dict)
    delay: float = 0.0  # seconds to wait before answering
    trickle: float = 0.0  # seconds between bytes of the body
    reset: bool = False  # close the connection without answering
    times: int | None = None
    client_id: str | None = None  # only requests of this client (None: all)
    echo: bool = False  # an error whose description echoes the request's credentials
    hits: int = 0  # how many requests it answered


class FaultQueue:
    """Faults to answer with, in order; each applies to one client or to all."""

    def __init__(self) -> None:
        self._faults: list[Fault] = []
        self._lock = threading.Lock()

    def inject(self, fault: Fault) -> None:
        with self._lock:
            self._faults.append(fault)

    def clear(self) -> None:
        with self._lock:
            self._faults.clear()

    def next(self, client_id: str | None) -> Fault | None:
        """The first fault that applies to this client (``times`` counts down per hit)."""
        with self._lock:
            for i, fault in enumerate(self._faults):
                if fault.client_id is not None and fault.client_id != client_id:
                    continue
                if fault.times is not None:
                    fault.times -= 1
                    if fault.times <= 0:
                        self._faults.pop(i)
                fault.hits += 1
                return fault
            return None


@dataclasses.dataclass(frozen=True)
class Request:
    at: float
    grant_type: str
    client_id: str | None
    answered: int  # HTTP status, 0 for a reset
    scope: str = ""


class Server(ThreadingHTTPServer):
    """A threading HTTP server that listens like Keycloak (Quarkus on Netty): with the
    system's connection backlog. ``socketserver``'s default of 5 overflows when a client
    opens more connections at once; the kernel then answers with SYN cookies and resets
    the connections whose cookie it cannot match (ConnectionResetError on a request)."""

    request_queue_size = socket.SOMAXCONN
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client closing its keep-alive connection is its right (ESO resets them by
        # the hundred in the benchmark's outage): not worth a traceback on stderr.
        if isinstance(sys.exc_info()[1], ConnectionResetError | BrokenPipeError):
            return
        super().handle_error(request, client_address)


class FakeKeycloak:
    """Thread-backed server; ``with FakeKeycloak() as kc: kc.token_url``."""

    def __init__(
        self,
        *,
        realm: str = "cloud",
        access_lifespan: int = 1200,
        refresh_lifespan: int = 7200,
        refresh_tokens: bool = True,
        tls: ssl.SSLContext | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        self.realm = realm
        self.access_lifespan = access_lifespan
        self.refresh_lifespan = refresh_lifespan
        self.refresh_tokens = refresh_tokens
        self.clients: dict[str, Client] = {}
        self.requests: list[Request] = []
        self.issued: list[str] = []  # every access and refresh token handed out
        self._refresh: dict[str, tuple[str, float]] = {}  # refresh token -> (client, expiry)
        self.faults = FaultQueue()
        self.in_flight = 0
        self.peak_in_flight = 0
        self.started: list[float] = []  # arrival time of every POST
        self._lock = threading.Lock()
        self._tls = tls
        self.on_request: Callable[[Request], None] | None = None
        self._server = Server((host, port), self._handler_class())
        if tls is not None:
            self._server.socket = tls.wrap_socket(self._server.socket, server_side=True)
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    # -- lifecycle ---------------------------------------------------------------
    def __enter__(self) -> FakeKeycloak:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        if self._thread.is_alive():  # shutdown() waits for a loop that never started
            self._server.shutdown()
        self._server.server_close()

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    @property
    def base_url(self) -> str:
        scheme = "https" if self._tls else "http"
        host = "localhost" if self._tls else "127.0.0.1"
        return f"{scheme}://{host}:{self.port}"

    @property
    def token_url(self) -> str:
        return f"{self.base_url}/auth/realms/{self.realm}/protocol/openid-connect/token"

    # -- configuration -----------------------------------------------------------
    def add_client(self, client_id: str, secret: str, **kwargs: bool) -> Client:
        client = Client(client_id, secret, **kwargs)
        with self._lock:
            self.clients[client_id] = client
        return client

    def inject(self, fault: Fault) -> None:
        self.faults.inject(fault)

    def clear_faults(self) -> None:
        self.faults.clear()

    def revoke_refresh_tokens(self) -> None:
        with self._lock:
            self._refresh.clear()

    def count(self, grant_type: str | None = None, status: int | None = 200) -> int:
        with self._lock:
            return sum(
                1
                for r in self.requests
                if (grant_type is None or r.grant_type == grant_type)
                and (status is None or r.answered == status)
            )

    # -- behaviour -----------------------------------------------------------------

    def _record(
        self, at: float, grant: str, client_id: str | None, status: int, scope: str = ""
    ) -> None:
        """One request, timestamped when it arrived (not when a delayed answer left)."""
        req = Request(at, grant, client_id, status, scope)
        with self._lock:
            self.requests.append(req)
        if self.on_request:
            self.on_request(req)

    def _mint(self, client_id: str, scope: str) -> dict[str, object]:
        now = int(time.time())
        header = _b64({"alg": "RS256", "typ": "JWT", "kid": "fake"})
        claims = _b64(
            {
                "exp": now + self.access_lifespan,
                "iat": now,
                "azp": client_id,
                "jti": secrets.token_hex(8),
                "typ": "Bearer",
            }
        )
        access = f"{header}.{claims}.{secrets.token_urlsafe(32)}"
        doc: dict[str, object] = {
            "access_token": access,
            "expires_in": self.access_lifespan,
            "refresh_expires_in": 0,
            "token_type": "Bearer",
            "not-before-policy": 0,
            "scope": scope or "profile email",
        }
        issued = [access]
        if self.refresh_tokens:
            claims = _b64({"typ": "Refresh", "jti": secrets.token_hex(8)})
            refresh = f"{header}.{claims}.{secrets.token_urlsafe(32)}"
            doc["refresh_token"] = refresh
            doc["refresh_expires_in"] = self.refresh_lifespan
            doc["session_state"] = secrets.token_hex(8)
            issued.append(refresh)
            with self._lock:
                self._refresh[refresh] = (client_id, time.time() + self.refresh_lifespan)
        with self._lock:
            self.issued.extend(issued)
        return doc

    def answer(
        self, path: str, headers: dict[str, str], body: bytes
    ) -> tuple[int, dict[str, object]]:
        """Keycloak 26's logic and error bodies (recorded from the real server)."""
        if path != f"/auth/realms/{self.realm}/protocol/openid-connect/token":
            return 405, {"error": "HTTP 405 Method Not Allowed"}
        form = {k: v[0] for k, v in urllib.parse.parse_qs(body.decode("utf-8", "replace")).items()}
        grant = form.get("grant_type", "")
        client_id, secret = _basic(headers.get("authorization", ""))
        client = self.clients.get(client_id or "")
        if client is None or not client.enabled:
            return _error(401, "invalid_client", INVALID_CREDENTIALS)
        if secret != client.secret:
            return _error(401, "unauthorized_client", INVALID_CREDENTIALS)
        if not grant:
            return _error(400, "invalid_request", "Missing form parameter: grant_type")
        scope = form.get("scope", "")
        if grant == "client_credentials":
            if not client.service_accounts:
                return _error(
                    401, "unauthorized_client", "Client not enabled to retrieve service account"
                )
            if any(s not in ("profile", "email", "openid", "itcare") for s in scope.split()):
                return _error(400, "invalid_scope", "Invalid scopes: " + scope)
            return 200, self._mint(client.client_id, scope)
        if grant == "refresh_token":
            with self._lock:  # Keycloak's default: a refresh token may be reused
                held = self._refresh.get(form.get("refresh_token", ""))
            if held is None or held[1] < time.time():
                return _error(400, "invalid_grant", "Invalid refresh token")
            if held[0] != client.client_id:
                return _error(
                    400,
                    "invalid_grant",
                    "Invalid refresh token. Token client and authorized client don't match",
                )
            return 200, self._mint(client.client_id, scope)
        return _error(400, "unsupported_grant_type", "Unsupported grant_type")

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def setup(self) -> None:
                super().setup()
                # Headers and body go out in two writes: without this, Nagle and the
                # client's delayed ACK add 40 ms to every answer.
                self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

            def log_message(self, format: str, *args: object) -> None:  # quiet
                pass

            def do_GET(self) -> None:
                if self.path == "/_stats":  # for the benchmark: every request so far
                    with server._lock:
                        doc = {
                            "requests": [[r.at, r.client_id, r.answered] for r in server.requests],
                            "peak_in_flight": server.peak_in_flight,
                        }
                    self._send(200, json.dumps(doc).encode(), {"Content-Type": "application/json"})
                elif self.path.endswith("/.well-known/openid-configuration"):
                    doc = {
                        "issuer": f"{server.base_url}/auth/realms/{server.realm}",
                        "token_endpoint": server.token_url,
                    }
                    self._send(200, json.dumps(doc).encode(), {"Content-Type": "application/json"})
                else:
                    self._send(404, b"", {})

            def do_POST(self) -> None:
                with server._lock:
                    server.in_flight += 1
                    server.peak_in_flight = max(server.peak_in_flight, server.in_flight)
                    server.started.append(time.time())
                try:
                    self._post()
                finally:
                    with server._lock:
                        server.in_flight -= 1

            def _post(self) -> None:
                arrived = time.time()
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                headers = {k.lower(): v for k, v in self.headers.items()}
                form = urllib.parse.parse_qs(body.decode("utf-8", "replace"))
                grant = form.get("grant_type", [""])[0]
                client_id, _ = _basic(headers.get("authorization", ""))
                fault = server.faults.next(client_id)
                if fault is not None:
                    if fault.delay:
                        time.sleep(fault.delay)
                    if fault.reset:
                        server._record(arrived, grant, client_id, 0)
                        self.connection.setsockopt(
                            socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00"
                        )
                        self.close_connection = True
                        self.connection.close()
                        return
                    server._record(arrived, grant, client_id, fault.status)
                    body_out = _echo(headers, body) if fault.echo else fault.body
                    self._send(fault.status, body_out, fault.headers, trickle=fault.trickle)
                    return
                status, doc = server.answer(self.path, headers, body)
                server._record(arrived, grant, client_id, status, form.get("scope", [""])[0])
                self._send(
                    status,
                    json.dumps(doc).encode(),
                    {
                        "Content-Type": "application/json",
                        "Cache-Control": "no-store",
                        "Pragma": "no-cache",
                    },
                )

            def _send(
                self, status: int, body: bytes, headers: dict[str, str], trickle: float = 0.0
            ) -> None:
                try:
                    self.send_response(status)
                    for key, value in headers.items():
                        self.send_header(key, value)
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    if trickle:
                        for i in range(len(body)):
                            self.wfile.write(body[i : i + 1])
                            self.wfile.flush()
                            time.sleep(trickle)
                    else:
                        self.wfile.write(body)
                except (BrokenPipeError, ConnectionResetError):
                    self.close_connection = True

        return Handler


def _echo(headers: dict[str, str], body: bytes) -> bytes:
    """A careless endpoint's error: the request's credentials in several encodings."""
    auth = headers.get("authorization", "")
    try:
        pair = base64.b64decode(auth.removeprefix("Basic ")).decode()
    except ValueError:
        pair = ""
    client_id, _, secret = (urllib.parse.unquote_plus(p) for p in pair.partition(":"))
    description = (
        f"rejected {auth} for {urllib.parse.quote(client_id, safe='')}:"
        f"{urllib.parse.quote(secret, safe='')} body {body.decode('utf-8', 'replace')} "
        f"client_id={urllib.parse.quote_plus(client_id)}&"
        f"client_secret={urllib.parse.quote_plus(secret)} "
        f"raw {base64.b64encode(f'{client_id}:{secret}'.encode()).decode()}"
    )
    return json.dumps({"error": "invalid_client", "error_description": description}).encode()


def _error(status: int, error: str, description: str) -> tuple[int, dict[str, object]]:
    return status, {"error": error, "error_description": description}


def _b64(doc: dict[str, object]) -> str:
    return base64.urlsafe_b64encode(json.dumps(doc).encode()).decode().rstrip("=")


def _basic(header: str) -> tuple[str | None, str | None]:
    if not header.lower().startswith("basic "):
        return None, None
    try:
        raw = base64.b64decode(header[6:].strip()).decode()
    except ValueError:
        return None, None
    client_id, _, secret = raw.partition(":")
    return urllib.parse.unquote_plus(client_id), urllib.parse.unquote_plus(secret)


def http_date(seconds_from_now: float) -> str:
    return email.utils.formatdate(time.time() + seconds_from_now, usegmt=True)


def main() -> None:
    import argparse

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, default=8180)
    parser.add_argument("--client", action="append", default=[], metavar="ID:SECRET")
    parser.add_argument("--access-lifespan", type=int, default=1200)
    parser.add_argument(
        "--generated-clients",
        type=int,
        default=0,
        metavar="N",
        help="also clients bench-0..N-1 with secrets bench-secret-0..N-1",
    )
    parser.add_argument("--no-refresh-tokens", action="store_true")
    args = parser.parse_args()
    server = FakeKeycloak(
        port=args.port,
        access_lifespan=args.access_lifespan,
        refresh_tokens=not args.no_refresh_tokens,
    )
    for spec in args.client:
        client_id, _, secret = spec.partition(":")
        server.add_client(client_id, secret)
    for i in range(args.generated_clients):
        server.add_client(f"bench-{i}", f"bench-secret-{i}")
    server.start()
    print(server.token_url, flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        server.stop()


if __name__ == "__main__":
    main()
