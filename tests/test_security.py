"""Issue 13, unit tier: what a tenant or a token endpoint writes is input, never trusted.

Each test pins one finding of the audit and fails on the code before its fix:
encoded secrets in error texts, the token-URL allowlist, the body cap on the wire,
parse failures, proxies and trust, plain http in the CLI.
"""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import gzip
import http.server
import json
import re
import ssl
import threading
import tracemalloc
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from urllib.parse import quote, quote_plus, unquote

import certifi
import httpx
import hypothesis
import hypothesis.strategies as st
import pytest
import trustme

from itcare_operator.errors import InvalidTokenResponse, TokenEndpointError
from itcare_operator.settings import Settings
from itcare_operator.token import ClientCredentials
from itcare_operator.token_endpoint import (
    MAX_BODY_BYTES,
    TokenEndpoint,
    parse_token_response,
    ssl_context,
)
from itcare_operator.token_url import InvalidTokenURL, parse_prefix, remove_dot_segments
from tests.keycloak_fake import FakeKeycloak, Fault
from tests.test_cli import cli

URL = "https://accounts.cegedim.cloud/auth/realms/cloud/protocol/openid-connect/token"
CREDS = ClientCredentials("team-a:api+id", "s3cr&t/+=x y%")


def encodings(client_id: str, secret: str) -> dict[str, str]:
    """Every form of the API account an endpoint's text could carry (the leak scan's
    needles): raw, Base64 of ``id:secret`` (raw and form-encoded, as in a Basic
    header), URL-encoded, form-encoded."""
    forms = {
        "raw id": client_id,
        "raw secret": secret,
        "base64 id:secret": base64.b64encode(f"{client_id}:{secret}".encode()).decode(),
        "base64 basic pair": base64.b64encode(
            f"{quote_plus(client_id)}:{quote_plus(secret)}".encode()
        ).decode(),
    }
    for name, value in (("id", client_id), ("secret", secret)):
        forms[f"url-encoded {name}"] = quote(value, safe="")
        forms[f"url-encoded lowercase {name}"] = re.sub(
            "%[0-9A-F]{2}", lambda m: m.group().lower(), quote(value, safe="")
        )
        forms[f"form-encoded {name}"] = quote_plus(value)
    return forms


def mock(handler: object) -> TokenEndpoint:
    return TokenEndpoint(URL, transport=httpx.MockTransport(handler))  # type: ignore[arg-type]


# -- 2. encoded secrets escape the scrubber -----------------------------------------------
@pytest.mark.parametrize("form", list(encodings(CREDS.client_id, CREDS.client_secret)))
async def test_error_text_carries_no_credential_in_any_encoding(form: str) -> None:
    needle = encodings(CREDS.client_id, CREDS.client_secret)[form]

    def handle(request: httpx.Request) -> httpx.Response:
        return httpx.Response(
            401,
            json={"error": "invalid_client", "error_description": f"client {needle} unknown"},
        )

    endpoint = mock(handle)
    with pytest.raises(TokenEndpointError) as info:
        await endpoint.client_credentials(CREDS)
    await endpoint.aclose()
    text = str(info.value)
    for name, value in encodings(CREDS.client_id, CREDS.client_secret).items():
        assert value not in text, f"{name} leaked through {form}: {text}"
    assert str(info.value.reason) == "InvalidClient"  # the reason survives


async def test_echoing_endpoint_leaks_nothing() -> None:
    """The Keycloak-compatible server echoing the Authorization header and body."""
    with FakeKeycloak() as kc:
        kc.add_client(CREDS.client_id, CREDS.client_secret)
        kc.inject(Fault(401, echo=True))
        endpoint = TokenEndpoint(kc.token_url)
        with pytest.raises(TokenEndpointError) as info:
            await endpoint.client_credentials(CREDS)
        await endpoint.aclose()
    text = str(info.value)
    for name, value in encodings(CREDS.client_id, CREDS.client_secret).items():
        assert value not in text, f"{name} leaked: {text}"


def test_the_cli_stderr_carries_no_encoded_credential() -> None:
    with FakeKeycloak() as kc:
        kc.add_client(CREDS.client_id, CREDS.client_secret)
        kc.inject(Fault(401, echo=True))
        proc = cli(
            "token",
            f"--token-url={kc.token_url}",
            env={"ITCARE_CLIENT_ID": CREDS.client_id, "ITCARE_CLIENT_SECRET": CREDS.client_secret},
        )
    assert proc.returncode == 3, proc.stderr
    for name, value in encodings(CREDS.client_id, CREDS.client_secret).items():
        assert value not in proc.stdout + proc.stderr, f"{name} leaked"


# -- 3. the token-URL allowlist is a string prefix ----------------------------------------
DEFAULT = Settings()


@pytest.mark.parametrize(
    ("url", "allowed"),
    [
        (URL, True),
        ("https://ACCOUNTS.cegedim.cloud:443/auth/realms/cloud/protocol/x", True),
        ("https://accounts.cegedim.cloud/auth/realms/cloud/../master/protocol/x", False),
        # httpx removes "a%2Fb/.." before sending, a decoding server then sees "..".
        ("https://accounts.cegedim.cloud/auth/realms/cloud/a%2Fb/../%2e%2e", False),
        ("https://accounts.cegedim.cloud/auth/realms/cloud/x/%2E%2E/%2e%2e/master", False),
        ("https://accounts.cegedim.cloud/auth/realms/cloud/../../../x", False),
        ("https://accounts.cegedim.cloud/auth/realms/cloud/%2e%2e/master/x", False),
        ("https://accounts.cegedim.cloud/auth/realms/cloud%2F..%2Fmaster/x", False),
        ("https://accounts.cegedim.cloud/auth/realms/cloudy/protocol/x", False),
        ("https://accounts.cegedim.cloud:8443/auth/realms/cloud/protocol/x", False),
        ("http://accounts.cegedim.cloud/auth/realms/cloud/protocol/x", False),
        ("https://user@accounts.cegedim.cloud/auth/realms/cloud/x", False),
        ("https://accounts.cegedim.cloud/auth/realms/cloud/x?next=//evil", False),
        ("https://accounts.cegedim.cloud/auth/realms/cloud/x#frag", False),
        ("https://accounts.cegedim.cloud/auth/realms/cloud/x\\..\\..\\y", False),
    ],
)
def test_default_allowlist_compares_parsed_urls(url: str, allowed: bool) -> None:
    assert DEFAULT.token_url_allowed(url) is allowed


@pytest.mark.parametrize(
    "url",
    [
        "https://accounts.cegedim.cloud.evil.example/auth/realms/cloud/x",
        "https://accounts.cegedim.cloud@evil.example/auth/realms/cloud/x",
        "https://accounts.cegedim.cloud:443@evil.example/x",
    ],
)
def test_a_host_prefix_without_slash_does_not_allow_other_hosts(url: str) -> None:
    settings = Settings(allowed_token_urls=("https://accounts.cegedim.cloud",))
    assert settings.token_url_allowed("https://accounts.cegedim.cloud/auth/realms/x/token")
    assert not settings.token_url_allowed(url)


def test_a_path_prefix_ends_at_a_segment_boundary() -> None:
    settings = Settings(allowed_token_urls=("https://accounts.cegedim.cloud/auth/realms/cloud",))
    assert settings.token_url_allowed(URL)
    assert not settings.token_url_allowed("https://accounts.cegedim.cloud/auth/realms/cloudy/t")


@pytest.mark.parametrize(
    "prefix",
    [
        "https://u:p@accounts.cegedim.cloud/",
        "https://h/x?y",
        "ftp://h/",
        "https:///x",
        "https://h/%2e%2e/",
    ],
)
def test_bad_prefixes_are_refused(prefix: str) -> None:
    with pytest.raises(InvalidTokenURL):
        parse_prefix(prefix)
    proc = cli("run", f"--allowed-token-url={prefix}")
    assert proc.returncode == 2 and "--allowed-token-url" in proc.stderr


# -- 4. the body cap applies on the wire -------------------------------------------------
class _Chunks(httpx.AsyncByteStream):
    """A streamed body, as a network transport delivers it (not pre-read)."""

    def __init__(self, data: bytes) -> None:
        self._data = data

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for i in range(0, len(self._data), 16384):
            yield self._data[i : i + 16384]


def test_a_compressed_bomb_is_refused_without_inflating_it() -> None:
    bomb = gzip.compress(b" " * (20 * 1024 * 1024), 9)  # 20 MiB of JSON whitespace
    assert len(bomb) < MAX_BODY_BYTES
    seen: list[httpx.Request] = []

    def handle(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, headers={"Content-Encoding": "gzip"}, stream=_Chunks(bomb))

    async def run() -> None:
        endpoint = mock(handle)
        try:
            with pytest.raises(InvalidTokenResponse, match="exceeds"):
                await endpoint.client_credentials(CREDS)
        finally:
            await endpoint.aclose()

    tracemalloc.start()
    try:
        asyncio.run(run())
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 4 * 1024 * 1024, f"peak {peak / 2**20:.1f} MiB while refusing the body"
    assert seen[0].headers["Accept-Encoding"] == "identity"


async def test_a_small_compressed_answer_still_works() -> None:
    body = gzip.compress(
        json.dumps({"access_token": "abc", "token_type": "Bearer", "expires_in": 60}).encode()
    )

    def handle(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, headers={"Content-Encoding": "gzip"}, stream=_Chunks(body))

    endpoint = mock(handle)
    token = await endpoint.client_credentials(CREDS)
    await endpoint.aclose()
    assert token.access_token == "abc"


async def test_an_oversized_raw_body_is_cut_on_the_wire() -> None:
    def handle(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, stream=_Chunks(b"x" * (MAX_BODY_BYTES + 1)))

    endpoint = mock(handle)
    with pytest.raises(InvalidTokenResponse, match="exceeds"):
        await endpoint.client_credentials(CREDS)
    await endpoint.aclose()


# -- 5. uncaught parse failures ----------------------------------------------------------
@pytest.mark.parametrize("status", [200, 400, 401, 503])
async def test_deeply_nested_json_is_an_invalid_response(status: int) -> None:
    deep = b"[" * 30000  # within the body cap, far beyond the parser's recursion limit
    assert len(deep) <= MAX_BODY_BYTES

    def handle(request: httpx.Request) -> httpx.Response:
        return httpx.Response(status, content=deep)

    endpoint = mock(handle)
    with pytest.raises(TokenEndpointError):
        await endpoint.client_credentials(CREDS)
    await endpoint.aclose()
    with pytest.raises(InvalidTokenResponse):
        parse_token_response(deep, dt.datetime.now(dt.UTC))


# -- 6. proxies and trust ----------------------------------------------------------------
@pytest.fixture
def capture_proxy() -> Iterator[tuple[str, list[str]]]:
    """A loopback 'proxy' that records what reaches it and answers 502."""
    seen: list[str] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            seen.append(f"{self.command} {self.path} {self.headers.get('Authorization')}")
            self.send_response(502)
            self.send_header("Content-Length", "0")
            self.end_headers()

        do_GET = do_POST
        do_CONNECT = do_POST

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", seen
    finally:
        server.shutdown()
        server.server_close()


async def test_plain_http_token_urls_never_go_through_a_proxy(
    capture_proxy: tuple[str, list[str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    proxy, seen = capture_proxy
    for var in ("HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.setenv(var, proxy)
    for var in ("NO_PROXY", "no_proxy"):
        monkeypatch.delenv(var, raising=False)
    with FakeKeycloak() as kc:
        kc.add_client(CREDS.client_id, CREDS.client_secret)
        endpoint = TokenEndpoint(kc.token_url)
        token = await endpoint.client_credentials(CREDS)
        await endpoint.aclose()
        assert token.access_token in kc.issued
    assert seen == []  # the Basic credentials never reached the proxy


def test_a_ca_bundle_adds_to_the_default_trust(tmp_path: Path) -> None:
    ca = trustme.CA()
    bundle = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(bundle))
    default = ssl.create_default_context(cafile=certifi.where())
    context = ssl_context(str(bundle))
    assert len(context.get_ca_certs()) == len(default.get_ca_certs()) + 1
    assert len(ssl_context().get_ca_certs()) == len(default.get_ca_certs())


# -- 7. plain http in the CLI ------------------------------------------------------------
def test_cli_refuses_plain_http_to_a_remote_host() -> None:
    env = {"ITCARE_CLIENT_ID": CREDS.client_id, "ITCARE_CLIENT_SECRET": CREDS.client_secret}
    proc = cli("token", "--token-url=http://0.0.0.0:9/token", env=env)
    assert proc.returncode == 2 and "--insecure-http" in proc.stderr
    # Insisting lets it through to the network (a closed local port here: exit 4).
    proc = cli("token", "--token-url=http://0.0.0.0:9/token", "--insecure-http", env=env)
    assert proc.returncode == 4, proc.stderr


def test_cli_allows_plain_http_to_loopback() -> None:
    with FakeKeycloak() as kc:
        kc.add_client(CREDS.client_id, CREDS.client_secret)
        proc = cli(
            "token",
            f"--token-url={kc.token_url}",
            env={"ITCARE_CLIENT_ID": CREDS.client_id, "ITCARE_CLIENT_SECRET": CREDS.client_secret},
        )
    assert proc.returncode == 0, proc.stderr


SEGMENTS = ["cloud", "master", "x", "..", ".", "%2e%2e", "%2E", "a%2Fb", "%2f..", ""]


@hypothesis.settings(max_examples=300, deadline=None)
@hypothesis.given(st.lists(st.sampled_from(SEGMENTS), max_size=6))
def test_an_allowed_url_reaches_only_paths_under_the_prefix(segments: list[str]) -> None:
    """Whatever the client sends, and however the server decodes it, stays in the realm."""
    url = "https://accounts.cegedim.cloud/auth/realms/cloud/" + "/".join(segments)
    if not DEFAULT.token_url_allowed(url):
        return
    sent = httpx.URL(url).raw_path.decode()
    for path in (sent, unquote(sent)):
        normalised = remove_dot_segments(path)
        assert normalised.startswith("/auth/realms/cloud/") or normalised == "/auth/realms/cloud"
