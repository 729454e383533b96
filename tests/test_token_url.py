"""Issue 22, finding 10: look-alikes of dot segments and separators in a token URL.

``url_allowed`` and the CRDs' CEL rules for ``tokenURL`` refuse them both; the CEL
rules are evaluated here with Python's ``re`` (the patterns use only syntax RE2 and
``re`` read alike), and on the real API server in ``tests/test_security_env.py``.
"""

from __future__ import annotations

import re
import unicodedata
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import hypothesis
import hypothesis.strategies as st
import pytest
import yaml

from itcare_operator.spec import InvalidSpec, parse_spec
from itcare_operator.token_url import parse_prefix, remove_dot_segments, url_allowed

ROOT = Path(__file__).resolve().parent.parent
CRD_FILES = sorted((ROOT / "crds").glob("*.yaml")) + sorted(
    (ROOT / "charts" / "itcare-token-operator" / "files").glob("*.yaml")
)
REALM = "https://accounts.cegedim.cloud/auth/realms/cloud"
PREFIXES = [parse_prefix(REALM)]
TOKEN = f"{REALM}/protocol/openid-connect/token"

LOOK_ALIKES = [
    f"{REALM}/..;/master/protocol/openid-connect/token",
    f"{REALM}/x/..;/..;/master/token",
    f"{REALM}/..;jsessionid=1/master/token",
    f"{REALM}/..%3b/master/token",
    f"{REALM}/..%3B/master/token",
    f"{REALM}/%2e%2e/master/token",
    f"{REALM}/.%2E/master/token",
    f"{REALM}/%252e%252e/master/token",
    f"{REALM}/%252E%252E%252Fmaster/token",
    f"{REALM}/\uff0e\uff0e/master/token",  # fullwidth full stops
    f"{REALM}/%ef%bc%8e%ef%bc%8e/master/token",  # the same, percent-encoded UTF-8
    f"{REALM}/..%c0%af../master/token",  # overlong UTF-8 slash
    f"{REALM}/x%2f..%2f..%2fmaster/token",
    f"{REALM}/x%2F..%2Fmaster/token",
    f"{REALM}/x%5c..%5cmaster/token",
    f"{REALM}/x\\..\\master/token",
    f"{REALM}/%u002e%u002e/master/token",  # IIS-style escape
    f"{REALM}/..%00/master/token",
    f"{REALM}/.../master/token",  # trailing dots trimmed by Windows path handling
    f"{REALM}/..%20/master/token",
    f"{REALM}/protocol;x=y/openid-connect/token",
    f"{REALM}/token%",
    f"{REALM}/caf\u00e9/token",
]
LEGITIMATE = [
    TOKEN,
    f"{REALM}/protocol/openid-connect/token/",
    f"{REALM}/.well-known/openid-configuration",
    f"{REALM}/protocol/openid-connect/token-v2",
    f"{REALM}/my%20client/token",
    f"{REALM}/a%41b/token",
    f"{REALM}/v1.2/..x/token",
    "https://ACCOUNTS.cegedim.cloud:443/auth/realms/cloud/protocol/openid-connect/token",
]


@pytest.mark.parametrize("url", LOOK_ALIKES)
def test_url_allowed_refuses_look_alikes(url: str) -> None:
    assert not url_allowed(url, PREFIXES)


@pytest.mark.parametrize("url", LEGITIMATE)
def test_url_allowed_still_allows_real_token_urls(url: str) -> None:
    assert url_allowed(url, PREFIXES)


# -- the CRDs' CEL rules, evaluated in Python ---------------------------------------------
_CEL_TOKEN = re.compile(
    r"\s*(?:(?P<call>self\.(?:startsWith|matches|contains))\('(?P<arg>(?:[^'\\]|\\.)*)'\)"
    r"|(?P<op>!|&&|\|\||\(|\)))"
)
_CEL_ESCAPE = re.compile(r"\\(.)")


def _cel_predicate(rule: str) -> Any:
    """A Python function for a tokenURL rule made of ``self.startsWith``,
    ``self.matches`` (RE2, unanchored: ``re.search``), ``self.contains``, ``!``,
    ``&&``, ``||`` and parentheses; anything else fails the test."""
    python: list[str] = []
    args: list[str] = []
    pos = 0
    rule = rule.strip()
    while pos < len(rule):
        token = _CEL_TOKEN.match(rule, pos)
        assert token, f"unsupported CEL at {rule[pos:]!r}"
        pos = token.end()
        if token["call"]:
            args.append(_CEL_ESCAPE.sub(r"\1", token["arg"]))
            method = token["call"].removeprefix("self.")
            python.append(f"{method}(args[{len(args) - 1}])")
        else:
            python.append({"!": " not ", "&&": " and ", "||": " or "}.get(token["op"], token["op"]))
    source = "".join(python)

    def evaluate(url: str) -> bool:
        names = {
            "args": args,
            "startsWith": url.startswith,
            "contains": lambda s: s in url,
            "matches": lambda pattern: re.search(pattern, url) is not None,
        }
        return bool(eval(source, {"__builtins__": {}}, names))  # the CRD rules, tokenised above

    return evaluate


def crd_rules(path: Path) -> list[tuple[str, Any]]:
    doc = yaml.safe_load(path.read_text())
    schema = doc["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    field = schema["properties"]["spec"]["properties"]["tokenURL"]
    return [(r["message"], _cel_predicate(r["rule"])) for r in field["x-kubernetes-validations"]]


def crd_refusals(path: Path, url: str) -> list[str]:
    return [message for message, holds in crd_rules(path) if not holds(url)]


@pytest.mark.parametrize("path", CRD_FILES, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_crd_refuses_look_alikes(path: Path) -> None:
    accepted = [url for url in LOOK_ALIKES if not crd_refusals(path, url)]
    assert not accepted, f"the CRD's CEL accepts: {accepted}"


@pytest.mark.parametrize("path", CRD_FILES, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_crd_accepts_real_token_urls(path: Path) -> None:
    for url in [*LEGITIMATE, "http://127.0.0.1:8080/realms/x/protocol/openid-connect/token"]:
        assert not crd_refusals(path, url), url


def test_the_cel_harness_reads_the_rules_as_the_api_server_does() -> None:
    holds = _cel_predicate(
        r"""self.startsWith('https://') || !self.matches('a\\.b') && !self.contains('\\')"""
    )
    assert holds("https://a.b") and holds("http://ab") and holds("http://a-b")
    assert not holds("http://a.b") and not holds("http://a\\b")


# -- what a front end may make of an allowed URL -----------------------------------------
def front_end_views(path: str) -> set[str]:
    """Paths a server or proxy in front of Keycloak may route by: decoded once or twice,
    ``;`` parameters cut (Tomcat, Undertow), Unicode folded (NFKC), backslashes as
    slashes, trailing dots and spaces of a segment trimmed (Windows)."""
    views = {path, unquote(path), unquote(unquote(path))}
    views |= {re.sub(r";[^/]*", "", v) for v in views}
    views |= {unicodedata.normalize("NFKC", v) for v in views}
    views |= {v.replace("\\", "/") for v in views}
    views |= {"/".join(s.rstrip(". ") or s for s in v.split("/")) for v in views}
    return views


SEGMENTS = [
    "cloud", "x", "..", ".", "..;", "..;x", "%2e%2e", "%252e%252e", "\uff0e\uff0e",
    "%2f..", "..%3b", "%5c..", "...", "..%20", ";", "token",
]  # fmt: skip


@hypothesis.settings(max_examples=500, deadline=None)
@hypothesis.given(st.lists(st.sampled_from(SEGMENTS), max_size=5))
def test_an_allowed_url_stays_under_the_prefix_for_every_front_end(segments: list[str]) -> None:
    url = f"{REALM}/" + "/".join(segments)
    if not url_allowed(url, PREFIXES):
        return
    path = url.removeprefix("https://accounts.cegedim.cloud")
    for view in front_end_views(path):
        normalised = remove_dot_segments(view)
        assert normalised.startswith("/auth/realms/cloud/") or normalised == "/auth/realms/cloud"


# -- spec.LOCAL_HTTP ----------------------------------------------------------------------
@pytest.mark.parametrize(
    "url",
    [
        "http://localhost/token\n",
        "http://127.0.0.1:8080\n",
        "http://localhost.evil.example/token",
        "http://localhost@evil.example/token",
        "http://127.0.0.1:80/\nhttp://evil.example/",
    ],
)
def test_plain_http_spec_rule_is_anchored(url: str) -> None:
    with pytest.raises(InvalidSpec, match="tokenURL must be https"):
        parse_spec(
            {"clientSecretRef": {"name": "acct"}, "targetSecret": {"name": "tok"}, "tokenURL": url}
        )
