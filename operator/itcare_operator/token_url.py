"""Which token URLs the operator may send an API account to.

A token URL comes from a tenant's spec, so it is compared as the HTTP client will
use it, never as a string: scheme, host and port must equal those of an allowed
prefix, and the path, with dot segments removed (both as written and after
percent-decoding, since servers differ in which one they route by), must lie under
the prefix's path at a segment boundary. A URL with userinfo, a query, a fragment,
a backslash or a non-ASCII character is refused outright, and so is a path with a
``;`` parameter, a percent-encoded dot, slash, backslash, semicolon, percent sign,
control character or non-ASCII byte, a ``%`` that starts no escape, or a segment of
only dots (and encoded spaces). A Keycloak token URL (``/realms/<realm>/protocol/
openid-connect/token``) needs none of them, and each is a classic way to make two
parsers disagree: front ends of the Tomcat and Undertow family cut ``;`` parameters
before normalising (``..;/`` is ``..``), double-decoding proxies turn ``%252e`` into
``.``, and some servers fold fullwidth dots or overlong UTF-8 into ``.`` and ``/``.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import re
from collections.abc import Iterable
from urllib.parse import unquote, urlsplit

__all__ = [
    "InvalidTokenURL",
    "URLPrefix",
    "is_loopback_http",
    "parse_prefix",
    "split_url",
    "url_allowed",
]

_DEFAULT_PORTS = {"https": 443, "http": 80}
LOOPBACK_HOSTS = frozenset({"localhost", "127.0.0.1", "::1"})


class InvalidTokenURL(ValueError):
    """A URL or prefix that cannot be judged safely."""


@dataclasses.dataclass(frozen=True)
class URLPrefix:
    """An allowed prefix, normalised: the path always ends with ``/``."""

    scheme: str
    host: str
    port: int
    path: str

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        port = "" if _DEFAULT_PORTS[self.scheme] == self.port else f":{self.port}"
        return f"{self.scheme}://{host}{port}{self.path}"


def remove_dot_segments(path: str) -> str:
    """RFC 3986 section 5.2.4."""
    out: list[str] = []
    segments = path.split("/")
    for i, segment in enumerate(segments):
        last = i == len(segments) - 1
        if segment == "..":
            if len(out) > 1:
                out.pop()
            if last:
                out.append("")
        elif segment == ".":
            if last:
                out.append("")
        else:
            out.append(segment)
    result = "/".join(out)
    return result if result.startswith("/") else "/" + result


def split_url(url: str, what: str) -> tuple[str, str, int, str]:
    """(scheme, host, port, raw path) of an absolute http(s) URL, or InvalidTokenURL.

    The scheme and host come back lower-case: ``HTTP://`` is plain http. Every caller
    that decides by scheme or host uses this, not a string prefix."""
    if not url.isascii() or any(ch.isspace() or not ch.isprintable() for ch in url) or "\\" in url:
        raise InvalidTokenURL(
            f"{what} contains whitespace, control or non-ASCII characters, or a backslash"
        )
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        raise InvalidTokenURL(f"{what} is not a valid URL") from None
    scheme = parts.scheme.lower()
    if scheme not in _DEFAULT_PORTS:
        raise InvalidTokenURL(f"{what} must be an https (or loopback http) URL")
    if "@" in parts.netloc:
        raise InvalidTokenURL(f"{what} must not contain userinfo (user@host)")
    if parts.query or parts.fragment or url.endswith(("?", "#")):
        raise InvalidTokenURL(f"{what} must not have a query or a fragment")
    host = (parts.hostname or "").lower()
    if not host:
        raise InvalidTokenURL(f"{what} has no host")
    return scheme, host, port or _DEFAULT_PORTS[scheme], parts.path or "/"


_AMBIGUOUS = re.compile(
    r"%(2e|2f|5c|3b|25|[01][0-9a-f]|7f|[89a-f][0-9a-f])"  # . / \ ; %, controls, non-ASCII bytes
    r"|%(?![0-9a-f]{2})"  # a % that starts no escape: %u002e, a trailing %
    r"|;",  # a path parameter: ..;/ is .. to Tomcat and Undertow
    re.IGNORECASE,
)
"""What the CRD's CEL refuses in a tokenURL too (the rule beside the dot-segment one)."""
_DOT_SEGMENT = re.compile(r"(\.|%20)+")
"""A segment of dots and encoded spaces: ``..`` to a server that trims trailing dots
and spaces from a segment, as Windows path handling does."""


def _paths(raw: str) -> set[str]:
    """The path as the client sends it and as a decoding server may route it.

    A path with dot segments or with any look-alike of one (:data:`_AMBIGUOUS`) has no
    single meaning: a client that removes dot segments before sending and a server that
    decodes afterwards (or the other way round) can route it above the prefix. Such a
    path matches nothing (the empty set)."""
    if _AMBIGUOUS.search(raw) or any(_DOT_SEGMENT.fullmatch(seg) for seg in raw.split("/")):
        return set()
    return {remove_dot_segments(raw), remove_dot_segments(unquote(raw))}


def parse_prefix(prefix: str) -> URLPrefix:
    """Normalise an ``--allowed-token-url`` prefix; a prefix without a trailing slash
    still ends at a segment boundary (``…/realms/cloud`` does not allow ``…/cloudy``)."""
    scheme, host, port, raw = split_url(prefix, f"allowed token URL prefix {prefix!r}")
    paths = _paths(raw)
    if len(paths) != 1:
        raise InvalidTokenURL(
            f"allowed token URL prefix {prefix!r} has dot segments or encoded separators"
        )
    path = paths.pop()
    return URLPrefix(scheme, host, port, path if path.endswith("/") else path + "/")


def url_allowed(url: str, prefixes: Iterable[URLPrefix]) -> bool:
    """True when ``url`` lies under one of ``prefixes`` by the rules of this module:
    never for a URL with a look-alike of a dot segment or of a separator (``..;/``,
    ``%2e``, ``%252e``, ``%2f``, ``%5c``, fullwidth dots, ``;`` parameters, non-ASCII),
    which a token URL has no reason to contain."""
    try:
        scheme, host, port, raw = split_url(url, "tokenURL")
    except InvalidTokenURL:
        return False
    paths = _paths(raw)
    for prefix in prefixes:
        if (scheme, host, port) != (prefix.scheme, prefix.host, prefix.port):
            continue
        if paths and all(p.startswith(prefix.path) or p + "/" == prefix.path for p in paths):
            return True
    return False


def is_loopback_http(url: str) -> bool:
    """An ``http://`` URL whose host is a loopback name or address."""
    try:
        scheme, host, _port, _path = split_url(url, "URL")
    except InvalidTokenURL:
        return False
    if scheme != "http":
        return False
    if host in LOOPBACK_HOSTS:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
