"""The side-by-side benchmark's own arithmetic and token-server controls (unit tier)."""

from __future__ import annotations

import base64
import io
import json
import urllib.error
import urllib.request

import pytest
from bench.peers import JwtWatch, cell, expired_seconds, gaps, quantiles
from bench.token_server import serve

from tests.keycloak_fake import FakeKeycloak


def test_expired_seconds_counts_only_the_expired_part_inside_the_window() -> None:
    versions = {
        # held a token expiring at 100 until a new one was seen at 110: 10 s expired
        "a": [(0.0, 100.0), (110.0, 300.0)],
        # always replaced in time
        "b": [(0.0, 100.0), (90.0, 300.0)],
        # expired at 150 and never replaced: expired until the window ends
        "c": [(0.0, 150.0)],
    }
    assert expired_seconds(versions, 0.0, 200.0) == (10.0 + 50.0, 2)
    # the window cuts both: [105, 160) sees 5 s of "a" and 10 s of "c"
    assert expired_seconds(versions, 105.0, 160.0) == (5.0 + 10.0, 2)
    assert expired_seconds(versions, 0.0, 95.0) == (0.0, 0)


def test_gaps_are_between_versions_inside_the_window() -> None:
    versions = {"a": [(0.0, 1.0), (60.0, 2.0), (118.0, 3.0)], "b": [(5.0, 1.0)]}
    assert gaps(versions, 0.0, 200.0) == [60.0, 58.0]
    assert gaps(versions, 30.0, 200.0) == [58.0]


def test_quantiles_are_every_fifth_percentile_of_the_sorted_values() -> None:
    values = [float(v) for v in range(101)]  # 0..100: the p-th percentile is p
    assert quantiles(values) == [float(p) for p in range(0, 101, 5)]
    assert quantiles([7.0]) == [7.0] * 21
    assert quantiles([]) == []


def test_expiry_comes_from_the_tokens_exp_claim() -> None:
    claims = base64.urlsafe_b64encode(json.dumps({"exp": 1795900000}).encode()).decode()
    token = f"header.{claims.rstrip('=')}.signature"
    data = {"access_token": base64.b64encode(token.encode()).decode()}
    assert JwtWatch.expires_at(None, data) == 1795900000.0  # type: ignore[arg-type]


def _token(kc: FakeKeycloak) -> tuple[int, dict[str, object]]:
    basic = base64.b64encode(b"bench-0:bench-secret-0").decode()
    req = urllib.request.Request(
        kc.token_url,
        data=b"grant_type=client_credentials",
        headers={"Authorization": f"Basic {basic}"},
    )
    try:
        with urllib.request.urlopen(req, timeout=5) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, {}


def test_token_server_commands_change_lifetime_and_make_an_outage() -> None:
    with FakeKeycloak(access_lifespan=120, refresh_tokens=False) as kc:
        kc.add_client("bench-0", "bench-secret-0")
        out = io.StringIO()
        serve(kc, ["lifespan 60\n"], out)
        status, doc = _token(kc)
        assert (status, doc["expires_in"]) == (200, 60)
        serve(kc, ["outage on\n"], out)
        assert _token(kc)[0] == 503
        assert _token(kc)[0] == 503
        serve(kc, ["outage off\n", "bogus\n"], out)
        assert _token(kc)[0] == 200
        assert out.getvalue().splitlines() == ["ok", "ok", "ok", "unknown command: bogus"]


@pytest.mark.parametrize("line", ["lifespan\n", "outage maybe\n"])
def test_token_server_rejects_malformed_commands(line: str) -> None:
    with FakeKeycloak() as kc:
        out = io.StringIO()
        serve(kc, [line], out)
        assert out.getvalue().startswith("unknown command")


def test_an_outage_not_recovered_from_is_shown_as_such() -> None:
    done = {"expired_token_s_outage": 0.0, "outage_recovery_s": 11.7, "outage_recovered": True}
    gave_up = {"expired_token_s_outage": 67438.5, "outage_recovery_s": None}
    assert cell(done, "outage_recovery_s") == "11.7"
    assert cell(done, "expired_token_s_outage") == "0.0"
    assert cell(gave_up, "outage_recovery_s") == "not all within 300 s"
    assert cell(gave_up, "expired_token_s_outage") == ">= 67438.5"
    assert cell({}, "outage_recovery_s") == "-"  # the phase did not run
