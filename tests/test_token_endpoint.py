"""The token endpoint client against the loopback Keycloak-compatible server."""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import json
import logging
import socket
import time
from pathlib import Path

import httpx
import pytest

from itcare_operator.errors import (
    EndpointUnavailable,
    FailureKind,
    InvalidGrant,
    InvalidTokenResponse,
    RateLimited,
    Reason,
    RequestRejected,
    TokenEndpointError,
)
from itcare_operator.token import ClientCredentials
from itcare_operator.token_endpoint import MAX_BODY_BYTES, Grant, TokenEndpoint, TokenEndpoints
from tests.conftest import CLIENT_ID, CLIENT_SECRET
from tests.keycloak_fake import FakeKeycloak, Fault, http_date

CREDS = ClientCredentials(CLIENT_ID, CLIENT_SECRET)


async def obtain(server: FakeKeycloak, creds: ClientCredentials = CREDS, **kw: object) -> object:
    endpoint = TokenEndpoint(server.token_url, read_timeout=1.0, total_timeout=2.0)
    try:
        return await endpoint.obtain(creds, **kw)  # type: ignore[arg-type]
    finally:
        await endpoint.aclose()


async def fails(server: FakeKeycloak, creds: ClientCredentials = CREDS) -> TokenEndpointError:
    with pytest.raises(TokenEndpointError) as info:
        await obtain(server, creds)
    exc = info.value
    for secret in (*creds.secrets(), *server.issued):
        assert secret not in str(exc)
        assert secret not in repr(exc)
    return exc


async def test_client_credentials(keycloak: FakeKeycloak) -> None:
    before = dt.datetime.now(dt.UTC)
    result = await obtain(keycloak)
    token = result.token  # type: ignore[attr-defined]
    assert result.grant is Grant.CLIENT_CREDENTIALS  # type: ignore[attr-defined]
    assert token.access_token in keycloak.issued
    assert before + dt.timedelta(seconds=1199) <= token.expires_at
    assert token.expires_at <= dt.datetime.now(dt.UTC) + dt.timedelta(seconds=1200)
    assert keycloak.count("client_credentials") == 1


async def test_basic_auth_is_form_encoded(keycloak: FakeKeycloak) -> None:
    seen: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.headers["authorization"])
        assert request.headers["content-type"] == "application/x-www-form-urlencoded"
        assert request.content == b"grant_type=client_credentials&scope=profile+email"
        assert request.headers["user-agent"].startswith("itcare-token-operator/")
        return httpx.Response(
            200, json={"access_token": "a", "expires_in": 60, "token_type": "Bearer"}
        )

    endpoint = TokenEndpoint("https://kc.example/token", transport=httpx.MockTransport(handler))
    await endpoint.client_credentials(ClientCredentials("id:1", "p+s/="), scope="profile email")
    await endpoint.aclose()
    assert base64.b64decode(seen[0][6:]) == b"id%3A1:p%2Bs%2F%3D"


async def test_secret_with_special_characters_is_accepted_by_keycloak_rules(
    keycloak: FakeKeycloak,
) -> None:
    # CLIENT_SECRET holds '+', '/' and '=': only correct RFC 6749 encoding passes.
    assert (await obtain(keycloak)).token.access_token  # type: ignore[attr-defined]


async def test_scope_is_sent_only_when_set(keycloak: FakeKeycloak) -> None:
    await obtain(keycloak)
    await obtain(keycloak, scope="profile")
    assert [r.scope for r in keycloak.requests] == ["", "profile"]


WRONG = ClientCredentials(CLIENT_ID, "wrong-secret-value")


@pytest.mark.parametrize(
    ("setup", "creds", "reason", "text"),
    [
        (lambda kc: None, WRONG, Reason.UNAUTHORIZED_CLIENT, "Invalid client"),
        (lambda kc: kc.clients.pop(CLIENT_ID), CREDS, Reason.INVALID_CLIENT, "Invalid client"),
        (
            lambda kc: setattr(kc.clients[CLIENT_ID], "enabled", False),
            CREDS,
            Reason.INVALID_CLIENT,
            "Invalid client",
        ),
        (
            lambda kc: setattr(kc.clients[CLIENT_ID], "service_accounts", False),
            CREDS,
            Reason.UNAUTHORIZED_CLIENT,
            "service account",
        ),
    ],
    ids=["wrong-secret", "unknown-client", "disabled-client", "no-service-account"],
)
async def test_rejections(
    keycloak: FakeKeycloak, setup: object, creds: ClientCredentials, reason: Reason, text: str
) -> None:
    setup(keycloak)  # type: ignore[operator]
    exc = await fails(keycloak, creds)
    assert isinstance(exc, RequestRejected) and exc.reason is reason and exc.status_code == 401
    assert exc.kind is FailureKind.REJECTED
    assert text in str(exc)


async def test_invalid_scope(keycloak: FakeKeycloak) -> None:
    with pytest.raises(RequestRejected) as info:
        await obtain(keycloak, scope="admin")
    assert info.value.reason is Reason.INVALID_SCOPE and info.value.status_code == 400


@pytest.mark.parametrize(
    ("fault", "cls", "reason", "retry_after"),
    [
        (
            Fault(503, headers={"Retry-After": "7"}),
            EndpointUnavailable,
            Reason.TOKEN_ENDPOINT_UNAVAILABLE,
            7.0,
        ),
        (Fault(503), EndpointUnavailable, Reason.TOKEN_ENDPOINT_UNAVAILABLE, None),
        (
            Fault(500, body=b'{"error":"unknown_error"}'),
            EndpointUnavailable,
            Reason.TOKEN_ENDPOINT_UNAVAILABLE,
            None,
        ),
        (
            Fault(502, body=b"<html>bad gateway</html>"),
            EndpointUnavailable,
            Reason.TOKEN_ENDPOINT_UNAVAILABLE,
            None,
        ),
        (Fault(429, headers={"Retry-After": "12"}), RateLimited, Reason.RATE_LIMITED, 12.0),
        (
            Fault(
                400,
                body=b'{"error":"invalid_request","error_description":"Missing form parameter"}',
            ),
            RequestRejected,
            Reason.INVALID_REQUEST,
            None,
        ),
        (
            Fault(200, body=b"<html>login page</html>"),
            InvalidTokenResponse,
            Reason.INVALID_TOKEN_RESPONSE,
            None,
        ),
        (
            Fault(200, body=b'{"access_token":"abc","expires_in":12'),
            InvalidTokenResponse,
            Reason.INVALID_TOKEN_RESPONSE,
            None,
        ),
        (
            Fault(200, body=b'{"token_type":"Bearer","expires_in":60}'),
            InvalidTokenResponse,
            Reason.INVALID_TOKEN_RESPONSE,
            None,
        ),
        (
            Fault(200, body=b'{"access_token":"a","token_type":"Bearer","expires_in":0}'),
            InvalidTokenResponse,
            Reason.INVALID_TOKEN_RESPONSE,
            None,
        ),
        (
            Fault(200, body=b'{"a":"' + b"x" * (MAX_BODY_BYTES + 10) + b'"}'),
            InvalidTokenResponse,
            Reason.INVALID_TOKEN_RESPONSE,
            None,
        ),
        (
            Fault(404, body=b"not found"),
            EndpointUnavailable,
            Reason.TOKEN_ENDPOINT_UNAVAILABLE,
            None,
        ),
        (Fault(reset=True), EndpointUnavailable, Reason.TOKEN_ENDPOINT_UNAVAILABLE, None),
        (Fault(200, delay=1.5), EndpointUnavailable, Reason.TOKEN_ENDPOINT_UNAVAILABLE, None),
        (
            Fault(
                200,
                body=b'{"access_token":"abcdefgh","token_type":"Bearer","expires_in":60}',
                trickle=0.4,
            ),
            EndpointUnavailable,
            Reason.TOKEN_ENDPOINT_UNAVAILABLE,
            None,
        ),
    ],
    ids=[
        "503-retry-after",
        "503",
        "500",
        "502-html",
        "429",
        "400-invalid-request",
        "html-200",
        "truncated-json",
        "missing-token",
        "expires-zero",
        "oversized",
        "404",
        "reset",
        "read-timeout",
        "trickle-total-timeout",
    ],
)
async def test_faults(
    keycloak: FakeKeycloak, fault: Fault, cls: type, reason: Reason, retry_after: float | None
) -> None:
    keycloak.inject(fault)
    exc = await fails(keycloak)
    assert type(exc) is cls, exc
    assert exc.reason is reason
    assert exc.retry_after == retry_after


async def test_retry_after_http_date(keycloak: FakeKeycloak) -> None:
    keycloak.inject(Fault(429, headers={"Retry-After": http_date(30)}))
    exc = await fails(keycloak)
    assert exc.retry_after is not None and 27 <= exc.retry_after <= 31


async def test_connection_refused() -> None:
    endpoint = TokenEndpoint("http://127.0.0.1:1/auth/realms/cloud/protocol/openid-connect/token")
    with pytest.raises(EndpointUnavailable, match="unreachable"):
        await endpoint.client_credentials(CREDS)
    await endpoint.aclose()


async def test_tls_with_ca_bundle(keycloak_tls: FakeKeycloak, ca_bundle: Path) -> None:
    endpoint = TokenEndpoint(keycloak_tls.token_url, ca_bundle=str(ca_bundle))
    token = await endpoint.client_credentials(CREDS)
    await endpoint.aclose()
    assert token.access_token in keycloak_tls.issued


async def test_tls_without_ca_is_refused(keycloak_tls: FakeKeycloak) -> None:
    endpoint = TokenEndpoint(keycloak_tls.token_url)
    with pytest.raises(EndpointUnavailable, match="TLS certificate verification failed"):
        await endpoint.client_credentials(CREDS)
    await endpoint.aclose()
    assert keycloak_tls.count(status=None) == 0


async def test_refresh_grant_and_fallback(keycloak: FakeKeycloak) -> None:
    endpoint = TokenEndpoint(keycloak.token_url)
    first = await endpoint.obtain(CREDS, grant=Grant.REFRESH_TOKEN)
    assert first.grant is Grant.CLIENT_CREDENTIALS and first.token.refresh_token
    second = await endpoint.obtain(CREDS, grant=Grant.REFRESH_TOKEN, current=first.token)
    assert second.grant is Grant.REFRESH_TOKEN
    assert second.token.access_token != first.token.access_token
    keycloak.revoke_refresh_tokens()
    third = await endpoint.obtain(CREDS, grant=Grant.REFRESH_TOKEN, current=second.token)
    assert third.grant is Grant.CLIENT_CREDENTIALS
    assert keycloak.count("refresh_token", status=400) == 1
    await endpoint.aclose()


async def test_refresh_keeps_previous_refresh_token_when_omitted() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(
            200, json={"access_token": "new", "expires_in": 60, "token_type": "bearer"}
        )

    endpoint = TokenEndpoint("https://kc.example/t", transport=httpx.MockTransport(handler))
    token = await endpoint.refresh(CREDS, "old-refresh")
    assert token.refresh_token == "old-refresh"
    await endpoint.aclose()


async def test_invalid_grant_is_its_own_class() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(
            400, json={"error": "invalid_grant", "error_description": "Token is not active"}
        )

    endpoint = TokenEndpoint("https://kc.example/t", transport=httpx.MockTransport(handler))
    with pytest.raises(InvalidGrant, match="Token is not active"):
        await endpoint.refresh(CREDS, "old-refresh")
    await endpoint.aclose()


async def test_secret_echoed_by_endpoint_is_scrubbed() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(
            401,
            json={
                "error": "unauthorized_client",
                "error_description": f"bad {CLIENT_SECRET} for {CLIENT_ID}",
            },
        )

    endpoint = TokenEndpoint("https://kc.example/t", transport=httpx.MockTransport(handler))
    with pytest.raises(RequestRejected) as info:
        await endpoint.client_credentials(CREDS)
    assert CLIENT_SECRET not in str(info.value) and CLIENT_ID not in str(info.value)
    assert "<redacted>" in str(info.value)
    await endpoint.aclose()


async def test_concurrency_cap_is_enforced() -> None:
    in_flight = peak = 0

    async def handler(request: httpx.Request) -> httpx.Response:
        nonlocal in_flight, peak
        in_flight += 1
        peak = max(peak, in_flight)
        await asyncio.sleep(0.02)
        in_flight -= 1
        return httpx.Response(
            200, json={"access_token": "a", "expires_in": 60, "token_type": "Bearer"}
        )

    endpoint = TokenEndpoint(
        "https://kc.example/t", transport=httpx.MockTransport(handler), max_concurrent=3
    )
    await asyncio.gather(*(endpoint.client_credentials(CREDS) for _ in range(20)))
    await endpoint.aclose()
    assert peak == 3


async def test_rate_limit_is_enforced() -> None:
    starts: list[float] = []

    def handler(request: httpx.Request) -> httpx.Response:
        starts.append(time.monotonic())
        return httpx.Response(
            200, json={"access_token": "a", "expires_in": 60, "token_type": "Bearer"}
        )

    endpoint = TokenEndpoint(
        "https://kc.example/t", transport=httpx.MockTransport(handler), rate=20
    )
    await asyncio.gather(*(endpoint.client_credentials(CREDS) for _ in range(30)))
    await endpoint.aclose()
    # 20 in the first burst, the other 10 at 20/s: at least ~0.45 s in all.
    assert starts[-1] - starts[0] >= 0.4


async def test_rate_limit_holds_at_the_wire_behind_a_slow_endpoint() -> None:
    """Requests that wait for a slot must not leave in a burst above the rate when the
    endpoint speeds up again: the bucket is drawn when the request starts."""
    starts: list[float] = []

    async def handler(request: httpx.Request) -> httpx.Response:
        starts.append(time.monotonic())
        if len(starts) <= 4:
            await asyncio.sleep(0.6)  # the endpoint is slow at first
        return httpx.Response(
            200, json={"access_token": "a", "expires_in": 60, "token_type": "Bearer"}
        )

    rate, burst = 10, 10
    endpoint = TokenEndpoint(
        "https://kc.example/t", transport=httpx.MockTransport(handler), max_concurrent=2, rate=rate
    )
    await asyncio.gather(*(endpoint.client_credentials(CREDS) for _ in range(40)))
    await endpoint.aclose()
    busiest = max(sum(1 for t in starts if s <= t < s + 1.0) for s in starts)
    assert len(starts) == 40
    assert busiest <= rate + burst, f"{busiest} starts in one second"


async def test_endpoints_share_one_pool_per_origin_and_trust() -> None:
    """Shared-cluster item 3: every spelling of a URL on one origin shares one
    client, concurrency cap and rate limit (they multiplied --requests-per-second)."""
    made: list[str] = []

    def factory(url: str, ca: str | None) -> TokenEndpoint:
        made.append(url)
        return TokenEndpoint(url)

    endpoints = TokenEndpoints(factory)
    realm = "https://accounts.example/auth/realms/cloud/protocol/openid-connect/token"
    first = endpoints.get(realm)
    for spelling in (
        "https://ACCOUNTS.example/auth/realms/cloud/protocol/openid-connect/token",
        "https://accounts.example:443/auth/realms/cloud/protocol/openid-connect/token",
        "https://accounts.example:0443/auth/realms/cloud/protocol/openid-connect/token",
        "https://accounts.example/auth/realms/cloud/x/../protocol/openid-connect/token",
        "HTTPS://accounts.example/auth/realms/cloud/other",
    ):
        assert endpoints.get(spelling) is first, spelling
    assert endpoints.get("https://accounts.example:8443/t") is not first
    assert endpoints.get("https://b.example/t") is not first
    assert endpoints.get(realm, "/ca.pem") is not first  # another trust
    assert len(endpoints) == 4
    await endpoints.aclose()
    assert made[0] == realm and len(made) == 4


async def test_unused_origins_are_closed_once_idle() -> None:
    endpoints = TokenEndpoints(lambda url, ca: TokenEndpoint(url))
    a, b = endpoints.get("https://a.example/t"), endpoints.get("https://b.example/t")
    assert await endpoints.retain([("https://a.example/other", None)], idle=3600) == 0
    assert await endpoints.retain([("https://a.example/other", None)], idle=0) == 1
    assert endpoints.get("https://a.example/t") is a
    assert endpoints.get("https://b.example/t") is not b  # made anew
    busy = endpoints.get("https://c.example/t")
    busy.in_flight = 1  # a request under way is never cut
    assert await endpoints.retain([], idle=0) == 2
    assert endpoints.get("https://c.example/t") is busy
    busy.in_flight = 0
    await endpoints.aclose()


async def test_requests_go_to_the_url_asked_not_the_origins_first(
    keycloak: FakeKeycloak,
) -> None:
    paths: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        paths.append(request.url.path)
        return httpx.Response(
            200, json={"access_token": "t", "expires_in": 60, "token_type": "Bearer"}
        )

    endpoint = TokenEndpoint("https://a.example/one", transport=httpx.MockTransport(handler))
    await endpoint.obtain(CREDS, url="https://a.example/two")
    await endpoint.obtain(CREDS)
    assert paths == ["/two", "/one"]
    await endpoint.aclose()


async def test_no_secret_in_logs(keycloak: FakeKeycloak, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    endpoint = TokenEndpoint(keycloak.token_url)
    first = await endpoint.obtain(CREDS, grant=Grant.REFRESH_TOKEN)
    keycloak.revoke_refresh_tokens()
    await endpoint.obtain(CREDS, grant=Grant.REFRESH_TOKEN, current=first.token)
    with pytest.raises(RequestRejected):
        await endpoint.client_credentials(ClientCredentials(CLIENT_ID, "nope-" + CLIENT_SECRET))
    logging.getLogger("test").debug("token=%r creds=%r", first.token, CREDS)
    await endpoint.aclose()
    text = "\n".join(r.getMessage() for r in caplog.records) + caplog.text
    assert "refresh token not accepted" in text  # the logs were captured
    for secret in (CLIENT_ID, CLIENT_SECRET, *keycloak.issued):
        assert secret not in text
    assert json.dumps(keycloak.issued)  # tokens were issued, so the scan meant something
    assert len(keycloak.issued) >= 4


def _failing_transport(error: BaseException) -> httpx.MockTransport:
    """A transport whose connection fails as httpcore reports it: ConnectError from the
    OSError (no name resolution on this machine's network is needed to test DNS)."""

    def handler(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connect failed", request=request) from error

    return httpx.MockTransport(handler)


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (
            socket.gaierror(socket.EAI_NONAME, "Name or service not known"),
            "token endpoint unreachable: DNS lookup of accounts.example.test failed",
        ),
        (
            ConnectionRefusedError(111, "Connection refused"),
            "token endpoint unreachable: connection to accounts.example.test:8443 refused",
        ),
        (OSError(113, "No route to host"), "connection to accounts.example.test:8443 failed"),
    ],
    ids=["dns", "refused", "other"],
)
async def test_connection_failures_say_which_and_where(error: BaseException, expected: str) -> None:
    url = "https://user:pw@accounts.example.test:8443/realms/cloud/token?k=v"
    endpoint = TokenEndpoint(url, transport=_failing_transport(error))
    with pytest.raises(EndpointUnavailable) as caught:
        await endpoint.client_credentials(CREDS)
    await endpoint.aclose()
    assert expected in str(caught.value)
    for leak in ("user", "pw", "/realms", "k=v", CREDS.client_id, CREDS.client_secret):
        assert leak not in str(caught.value)


async def test_connection_refused_names_the_address() -> None:
    endpoint = TokenEndpoint("http://127.0.0.1:1/auth/realms/cloud/protocol/openid-connect/token")
    with pytest.raises(EndpointUnavailable, match=r"connection to 127\.0\.0\.1:1 refused"):
        await endpoint.client_credentials(CREDS)
    await endpoint.aclose()


async def test_tls_failure_names_the_address(keycloak_tls: FakeKeycloak) -> None:
    endpoint = TokenEndpoint(keycloak_tls.token_url)
    url = httpx.URL(keycloak_tls.token_url)
    where = rf"verification failed for {url.host}:{url.port}:"
    with pytest.raises(EndpointUnavailable, match=where):
        await endpoint.client_credentials(CREDS)
    await endpoint.aclose()
