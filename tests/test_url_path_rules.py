"""token_url's two small rules on their own: RFC 3986 dot-segment removal (the oracle the
prefix tests normalise with, so it must be right by itself) and the loopback-http test
``itcare-operator token`` applies before sending plain http."""

from __future__ import annotations

import pytest

from itcare_operator.token_url import is_loopback_http, remove_dot_segments


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        # RFC 3986 section 5.2.4 and the section 5.4 examples, as paths.
        ("/a/b/c/./../../g", "/a/g"),
        ("mid/content=5/../6", "/mid/6"),
        ("/b/c/g", "/b/c/g"),
        ("/b/c/./g", "/b/c/g"),
        ("/b/c/g/", "/b/c/g/"),
        ("/b/c/.", "/b/c/"),
        ("/b/c/./", "/b/c/"),
        ("/b/c/..", "/b/"),
        ("/b/c/../", "/b/"),
        ("/b/c/../g", "/b/g"),
        ("/b/c/../..", "/"),
        ("/b/c/../../g", "/g"),
        ("/b/c/../../../g", "/g"),
        ("/./g", "/g"),
        ("/../g", "/g"),
        ("/g.", "/g."),
        ("/.g", "/.g"),
        ("/g..", "/g.."),
        ("/..g", "/..g"),
        ("/", "/"),
        ("", "/"),
        ("/auth/realms/cloud/../../admin", "/auth/admin"),
    ],
)
def test_remove_dot_segments(path: str, expected: str) -> None:
    assert remove_dot_segments(path) == expected


@pytest.mark.parametrize(
    "url",
    [
        "http://localhost/token",
        "http://localhost:8080/token",
        "http://127.0.0.1/token",
        "http://127.0.0.2:8080/",
        "http://[::1]:8080/token",
    ],
)
def test_loopback_http(url: str) -> None:
    assert is_loopback_http(url)


@pytest.mark.parametrize(
    "url",
    [
        "https://localhost/token",  # not plain http: nothing to allow
        "http://localhost.evil.example/token",
        "http://127.0.0.1.evil.example/",
        "http://evil.example/token",
        "http://10.0.0.1/token",
        "http://[::2]/token",
        "http://localhost /token",  # not a URL at all
        "localhost/token",
    ],
)
def test_not_loopback_http(url: str) -> None:
    assert not is_loopback_http(url)
