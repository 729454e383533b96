"""Cost of one token request against the loopback Keycloak-compatible server.

    .venv/bin/python -m bench.token_request [--requests 500]

Reports the median and p90 wall time of ``TokenEndpoint.client_credentials`` over a
kept-alive connection (the operator's case), and of a fresh client per request (the
CLI's case). The server runs in a thread of the same process, so the numbers include
both sides' Python work; they are for comparing changes on one machine, not absolute.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import statistics
import time

from tests.keycloak_fake import FakeKeycloak

from itcare_operator.token import ClientCredentials
from itcare_operator.token_endpoint import TokenEndpoint


async def measure(url: str, creds: ClientCredentials, n: int, reuse: bool) -> list[float]:
    samples = []
    endpoint = TokenEndpoint(url) if reuse else None
    for _ in range(n):
        started = time.perf_counter()
        if endpoint is None:
            fresh = TokenEndpoint(url)
            await fresh.client_credentials(creds)
            await fresh.aclose()
        else:
            await endpoint.client_credentials(creds)
        samples.append(time.perf_counter() - started)
    if endpoint is not None:
        await endpoint.aclose()
    return samples


def summary(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    return {
        "median_ms": round(statistics.median(ordered) * 1000, 3),
        "p90_ms": round(ordered[int(len(ordered) * 0.9)] * 1000, 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=500)
    args = parser.parse_args()
    creds = ClientCredentials("bench-client", "bench-secret")
    with FakeKeycloak() as server:
        server.add_client(creds.client_id, creds.client_secret)
        asyncio.run(measure(server.token_url, creds, 20, True))  # warm-up
        pooled = asyncio.run(measure(server.token_url, creds, args.requests, True))
        fresh = asyncio.run(measure(server.token_url, creds, args.requests // 5, False))
    print(
        json.dumps(
            {
                "requests": args.requests,
                "keep_alive": summary(pooled),
                "new_client_per_request": summary(fresh),
                "machine": f"{platform.machine()} python {platform.python_version()}",
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
