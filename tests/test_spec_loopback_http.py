"""``spec.tokenURL`` over plain http: loopback hosts only, the host matched whole.

tests/test_token_url.py covers the trailing newline and ``localhost.evil.example``;
here every loopback spelling is tried with what may follow a host in a URL.
"""

from __future__ import annotations

import pytest

from itcare_operator.spec import LOCAL_HTTP, InvalidSpec, parse_spec

HOSTS = ["localhost", "127.0.0.1", "[::1]"]


def spec(url: str) -> dict[str, object]:
    return {"clientSecretRef": {"name": "acct"}, "targetSecret": {"name": "tok"}, "tokenURL": url}


@pytest.mark.parametrize("host", HOSTS)
@pytest.mark.parametrize(
    "rest",
    [
        "@evil.example/",  # userinfo: the real host is evil.example
        ":8080@evil.example/",
        ".evil.example/",  # a longer host name
        "evil/",
        ":8080.evil.example/",
        ":8080evil/",
        ":/",
        "\\@evil.example/",
        "#@evil.example/",
        "?@evil.example/",
        "%2F@evil.example/",
    ],
)
def test_plain_http_is_refused_unless_the_host_is_loopback(host: str, rest: str) -> None:
    url = f"http://{host}{rest}"
    assert not LOCAL_HTTP.match(url)
    with pytest.raises(InvalidSpec, match="tokenURL must be https"):
        parse_spec(spec(url))


@pytest.mark.parametrize("host", HOSTS)
@pytest.mark.parametrize("rest", ["", "/", ":8080", ":8080/", ":8080/realms/x/token", "/t?a=b"])
def test_plain_http_to_loopback_is_allowed(host: str, rest: str) -> None:
    url = f"http://{host}{rest}"
    assert parse_spec(spec(url)).token_url == url
