"""The one module that talks to the Keycloak token endpoint.

Every HTTP outcome is converted here, and only here, into a :class:`Token` or one of
the exceptions of :mod:`itcare_operator.errors`.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import dataclasses
import datetime as dt
import logging
import socket
import ssl
import time
import zlib
from collections.abc import Callable, Iterable
from urllib.parse import quote_plus

import certifi
import httpx

from itcare_operator._version import __version__
from itcare_operator.errors import (
    EndpointUnavailable,
    InvalidGrant,
    InvalidTokenResponse,
    RateLimited,
    Reason,
    RequestRejected,
    TokenEndpointError,
)
from itcare_operator.token import DEFAULT_TOKEN_URL, ClientCredentials, Grant, Token
from itcare_operator.token_response import (
    MAX_BODY_BYTES,
    json_object,
    parse_retry_after,
    parse_token_response,
    scrub,
)
from itcare_operator.token_url import InvalidTokenURL, split_url

__all__ = [
    "DEFAULT_TOKEN_URL",
    "MAX_BODY_BYTES",
    "Grant",
    "TokenEndpoint",
    "TokenEndpoints",
    "TokenResult",
    "origin",
    "parse_retry_after",
    "parse_token_response",
]

log = logging.getLogger(__name__)

USER_AGENT = f"itcare-token-operator/{__version__}"
EVICT_IDLE = 60.0  # seconds an unused origin's endpoint stays open after its last request

Clock = Callable[[], dt.datetime]


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


@dataclasses.dataclass(frozen=True)
class TokenResult:
    token: Token
    grant: Grant
    """The grant that produced the token (after any fallback)."""


class _Throttle:
    """A token bucket: at most ``rate`` request starts per second, bursts of ``burst``."""

    def __init__(self, rate: float, burst: int) -> None:
        self._rate = rate
        self._burst = float(burst)
        self._tokens = float(burst)
        self._stamp = time.monotonic()
        self._lock = asyncio.Lock()

    async def acquire(self) -> None:
        async with self._lock:
            while True:
                now = time.monotonic()
                self._tokens = min(self._burst, self._tokens + (now - self._stamp) * self._rate)
                self._stamp = now
                if self._tokens >= 1:
                    self._tokens -= 1
                    return
                await asyncio.sleep((1 - self._tokens) / self._rate)


class TokenEndpoint:
    """A Keycloak token endpoint with one shared connection pool.

    ``transport`` is for tests (``httpx.MockTransport``); ``max_concurrent`` caps
    requests in flight and ``rate`` request starts per second, so a mass creation or
    recovery never floods Keycloak.
    """

    def __init__(
        self,
        url: str,
        *,
        ca_bundle: str | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        connect_timeout: float = 5.0,
        read_timeout: float = 10.0,
        total_timeout: float = 20.0,
        max_concurrent: int | None = None,
        rate: float | None = None,
        clock: Clock = utcnow,
    ) -> None:
        self.url = url
        self.in_flight = 0  # requests started and not answered (eviction waits for 0)
        self.last_used = time.monotonic()
        self._total_timeout = total_timeout
        self._clock = clock
        self._semaphore = asyncio.Semaphore(max_concurrent) if max_concurrent else None
        self._throttle = _Throttle(rate, max(1, int(rate))) if rate else None
        self._client = httpx.AsyncClient(
            transport=transport,
            verify=ssl_context(ca_bundle),
            # Proxies from the environment only for https: through a proxy, a plain
            # http request (loopback only) would hand the Basic credentials to it.
            trust_env=url.lower().startswith("https://"),
            timeout=httpx.Timeout(read_timeout, connect=connect_timeout),
            limits=httpx.Limits(
                # Every connection may be kept: with fewer kept than in flight, each
                # burst closed the surplus and opened (TLS) new ones next time.
                max_connections=max_concurrent or 100,
                max_keepalive_connections=max_concurrent or 100,
            ),
            # identity: the body cap counts the bytes on the wire (see _read_capped)
            headers={
                "User-Agent": USER_AGENT,
                "Accept": "application/json",
                "Accept-Encoding": "identity",
            },
            follow_redirects=False,
        )

    def __repr__(self) -> str:
        return f"TokenEndpoint({self.url!r})"

    async def aclose(self) -> None:
        await self._client.aclose()

    async def obtain(
        self,
        credentials: ClientCredentials,
        *,
        scope: str = "",
        grant: Grant = Grant.CLIENT_CREDENTIALS,
        current: Token | None = None,
        url: str | None = None,
    ) -> TokenResult:
        """Get a new token: by refresh token when asked and one is usable, else by login.
        ``url`` is the token URL on this endpoint's origin (default: the one it was made
        for).

        A rejected refresh (``invalid_grant`` or any other refusal or unusable
        answer) falls back to client_credentials at once. An outage does not: the
        second request would meet the same outage; the retry schedule handles it.
        """
        if (
            grant is Grant.REFRESH_TOKEN
            and current is not None
            and current.refresh_token
            and current.refresh_token_usable(self._clock())
        ):
            try:
                token = await self.refresh(credentials, current.refresh_token, scope=scope, url=url)
            except (RequestRejected, InvalidTokenResponse) as exc:
                log.info("refresh token not accepted (%s); logging in again", exc.reason)
            else:
                return TokenResult(token, Grant.REFRESH_TOKEN)
        token = await self.client_credentials(credentials, scope=scope, url=url)
        return TokenResult(token, Grant.CLIENT_CREDENTIALS)

    async def client_credentials(
        self, credentials: ClientCredentials, *, scope: str = "", url: str | None = None
    ) -> Token:
        form = {"grant_type": "client_credentials"}
        if scope:
            form["scope"] = scope
        return await self._request(credentials, form, credentials.secrets(), url)

    async def refresh(
        self,
        credentials: ClientCredentials,
        refresh_token: str,
        *,
        scope: str = "",
        url: str | None = None,
    ) -> Token:
        """RFC 6749 section 6 refresh; keeps ``refresh_token`` when the answer has none."""
        form = {"grant_type": "refresh_token", "refresh_token": refresh_token}
        if scope:
            form["scope"] = scope
        token = await self._request(credentials, form, (*credentials.secrets(), refresh_token), url)
        if token.refresh_token is None:
            token = dataclasses.replace(token, refresh_token=refresh_token)
        return token

    async def _request(
        self,
        credentials: ClientCredentials,
        form: dict[str, str],
        secrets: Iterable[str],
        url: str | None,
    ) -> Token:
        # The slot first, then the bucket: a request that took a bucket token and then
        # queued for a slot would start late, and a slow endpoint would let such requests
        # pile up and leave all at once, above the rate.
        self.in_flight += 1
        self.last_used = time.monotonic()
        try:
            async with self._semaphore or contextlib.nullcontext():
                if self._throttle is not None:
                    await self._throttle.acquire()
                return await self._send(credentials, form, tuple(secrets), url or self.url)
        finally:
            self.in_flight -= 1
            self.last_used = time.monotonic()

    async def _send(
        self,
        credentials: ClientCredentials,
        form: dict[str, str],
        secrets: tuple[str, ...],
        url: str,
    ) -> Token:
        headers = {"Authorization": basic_authorization(credentials)}
        try:
            async with asyncio.timeout(self._total_timeout):
                async with self._client.stream("POST", url, data=form, headers=headers) as resp:
                    body = await _read_capped(resp)
                    received_at = self._clock()
        except TimeoutError:
            raise EndpointUnavailable(
                f"token endpoint did not answer within {self._total_timeout:g}s"
            ) from None
        except httpx.TimeoutException as exc:
            raise EndpointUnavailable(f"token endpoint timed out ({type(exc).__name__})") from None
        except httpx.HTTPError as exc:
            raise EndpointUnavailable(_describe_transport_error(exc)) from None
        log.debug("token endpoint answered %s (%d bytes)", resp.status_code, len(body))
        if resp.status_code == 200:
            return parse_token_response(body, received_at, secrets=secrets)
        raise _error_from_response(resp, body, received_at, secrets)


class TokenEndpoints:
    """One shared :class:`TokenEndpoint` per origin (scheme, host, port) and trust (CA
    bundle): one connection pool, concurrency cap and rate limit however the URLs on
    it are spelled (any path under the realm, upper-case host, ``:443``). Endpoints no
    credential names are closed by :meth:`retain`."""

    def __init__(self, factory: Callable[[str, str | None], TokenEndpoint]) -> None:
        self._factory = factory
        self._endpoints: dict[tuple[str, str | None], TokenEndpoint] = {}

    def get(self, url: str, ca_bundle: str | None = None) -> TokenEndpoint:
        """The endpoint of ``url``'s origin (``url`` must be valid: see
        :func:`token_url.split_url`); the first URL seen on it is its default."""
        key = (origin(url), ca_bundle)
        endpoint = self._endpoints.get(key)
        if endpoint is None:
            endpoint = self._endpoints[key] = self._factory(url, ca_bundle)
        return endpoint

    def __len__(self) -> int:
        return len(self._endpoints)

    async def retain(self, used: Iterable[tuple[str, str | None]], idle: float = EVICT_IDLE) -> int:
        """Close the endpoints of origins no ``(url, ca_bundle)`` in ``used`` names,
        once idle for ``idle`` seconds; the number closed."""
        keep = {(origin(url), ca) for url, ca in used}
        now = time.monotonic()
        doomed = [
            key
            for key, endpoint in self._endpoints.items()
            if key not in keep and endpoint.in_flight == 0 and now - endpoint.last_used >= idle
        ]
        for key in doomed:
            await self._endpoints.pop(key).aclose()
        return len(doomed)

    async def aclose(self) -> None:
        endpoints, self._endpoints = list(self._endpoints.values()), {}
        for endpoint in endpoints:
            await endpoint.aclose()


def origin(url: str) -> str:
    """``scheme://host:port`` of a token URL, as compared: lower-case, default port
    explicit (a URL that does not parse is its own origin: it fails when used)."""
    try:
        scheme, host, port, _path = split_url(url, "tokenURL")
    except InvalidTokenURL:
        return url
    return f"{scheme}://{host}:{port}"


def ssl_context(ca_bundle: str | None = None) -> ssl.SSLContext:
    """The default trust (certifi's Mozilla CA set, as httpx uses), plus ``ca_bundle``."""
    context = ssl.create_default_context(cafile=certifi.where())
    if ca_bundle:
        context.load_verify_locations(cafile=ca_bundle)
    return context


def basic_authorization(credentials: ClientCredentials) -> str:
    """client_secret_basic (RFC 6749 section 2.3.1): form-encode, then Base64."""
    pair = f"{quote_plus(credentials.client_id)}:{quote_plus(credentials.client_secret)}"
    return "Basic " + base64.b64encode(pair.encode()).decode()


async def _read_capped(resp: httpx.Response) -> bytes:
    """The body, at most ``MAX_BODY_BYTES`` on the wire and after decoding.

    The raw stream is read (httpx would decompress before any cap could apply), and
    a gzip or deflate body the endpoint sent despite ``Accept-Encoding: identity`` is
    inflated with a bounded output: a small compressed body cannot expand in memory.
    """
    if resp.is_stream_consumed:  # an in-memory transport handed over a body it had read
        if len(resp.content) > MAX_BODY_BYTES:
            raise _too_large(resp.status_code)
        return resp.content
    chunks: list[bytes] = []
    size = 0
    async for chunk in resp.aiter_raw():
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            raise _too_large(resp.status_code)
        chunks.append(chunk)
    body = b"".join(chunks)
    encoding = resp.headers.get("Content-Encoding", "identity").strip().lower()
    if encoding in ("", "identity"):
        return body
    if encoding not in ("gzip", "x-gzip", "deflate"):
        raise InvalidTokenResponse(
            f"token endpoint answered with Content-Encoding {encoding[:20]!r}",
            status_code=resp.status_code,
        )
    wbits = zlib.MAX_WBITS | 16 if "gzip" in encoding else zlib.MAX_WBITS
    try:
        inflater = zlib.decompressobj(wbits)
        decoded = inflater.decompress(body, MAX_BODY_BYTES + 1)
    except zlib.error:
        raise InvalidTokenResponse(
            "token endpoint sent a corrupt compressed body", status_code=resp.status_code
        ) from None
    if len(decoded) > MAX_BODY_BYTES or inflater.unconsumed_tail:
        raise _too_large(resp.status_code)
    return decoded


def _too_large(status: int) -> InvalidTokenResponse:
    return InvalidTokenResponse(
        f"token endpoint response exceeds {MAX_BODY_BYTES} bytes", status_code=status
    )


def _describe_transport_error(exc: httpx.HTTPError) -> str:
    """Which failure (DNS, refused, TLS, ...) and where: ``host:port`` only, never the
    URL, whose user-info or query could hold a credential."""
    where = _endpoint_address(exc)
    cause: BaseException | None = exc
    while cause is not None:
        if isinstance(cause, ssl.SSLCertVerificationError):
            return f"TLS certificate verification failed for {where}: {cause.verify_message}"
        if isinstance(cause, ssl.SSLError):
            return f"TLS handshake with {where} failed: {cause.reason or type(cause).__name__}"
        if isinstance(cause, socket.gaierror):
            return f"token endpoint unreachable: DNS lookup of {where.rpartition(':')[0]} failed"
        if isinstance(cause, ConnectionRefusedError):
            return f"token endpoint unreachable: connection to {where} refused"
        cause = cause.__cause__ or cause.__context__
    kinds: dict[type[httpx.HTTPError], str] = {
        httpx.ConnectError: "connection to {} failed",
        httpx.RemoteProtocolError: "connection to {} closed or broken mid-response",
        httpx.ReadError: "connection to {} reset while reading",
        httpx.WriteError: "connection to {} reset while sending",
        httpx.UnsupportedProtocol: "unsupported URL scheme",
    }
    kind = kinds.get(type(exc), type(exc).__name__ + " ({})").format(where)
    return f"token endpoint unreachable: {kind}"


def _endpoint_address(exc: httpx.HTTPError) -> str:
    try:
        url = exc.request.url
    except RuntimeError:  # an error raised without its request
        return "the token endpoint"
    port = url.port or {"https": 443, "http": 80}.get(url.scheme)
    host = f"[{url.host}]" if ":" in url.host else url.host
    return f"{host}:{port}" if port else host


def _error_from_response(
    resp: httpx.Response, body: bytes, now: dt.datetime, secrets: tuple[str, ...]
) -> TokenEndpointError:
    status = resp.status_code
    retry_after = parse_retry_after(resp.headers.get("Retry-After"), now)
    doc = json_object(body) or {}
    error = doc.get("error") if isinstance(doc.get("error"), str) else None
    description = doc.get("error_description")
    detail = ""
    if error:
        detail = f" {scrub(error, secrets, 60)}"
        if isinstance(description, str) and description:
            detail += f": {scrub(description, secrets)}"
    prefix = f"{status} from token endpoint"
    if status == 429:
        return RateLimited(f"{prefix}{detail}", status_code=status, retry_after=retry_after)
    if status >= 500:
        return EndpointUnavailable(f"{prefix}{detail}", status_code=status, retry_after=retry_after)
    mapped = {
        "invalid_client": Reason.INVALID_CLIENT,
        "unauthorized_client": Reason.UNAUTHORIZED_CLIENT,
        "invalid_scope": Reason.INVALID_SCOPE,
        "invalid_request": Reason.INVALID_REQUEST,
        "unsupported_grant_type": Reason.INVALID_REQUEST,
    }
    if error == "invalid_grant":
        return InvalidGrant(f"{prefix}{detail}", status_code=status)
    if error in mapped:
        return RequestRejected(f"{prefix}{detail}", reason=mapped[error], status_code=status)
    if status in (401, 403):
        return RequestRejected(
            f"{prefix}{detail or ' (no OAuth2 error body)'}",
            reason=Reason.UNAUTHORIZED_CLIENT,
            status_code=status,
        )
    if status == 404:
        return EndpointUnavailable(
            f"{prefix}: no token endpoint at this URL (check tokenURL)", status_code=status
        )
    return InvalidTokenResponse(
        f"{prefix}{detail or ': unexpected answer'}", status_code=status, retry_after=retry_after
    )
