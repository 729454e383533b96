"""One token endpoint origin's health, as the credentials using it see it.

After a transient failure (an outage, overload, a rate limit) the origin is *down*:
the credentials due for a token wait on it instead of each sending a request, while
one credential at a time probes it (a new prober at most once a second, later if the
endpoint asked with ``Retry-After``; the prober itself retries on its own backoff).
The first success releases every waiting credential, earliest token expiry first, so
the tokens closest to lapsing are renewed first when the endpoint comes back. Pure
state with the time passed in.
"""

from __future__ import annotations

from collections.abc import Callable

__all__ = ["PROBE_INTERVAL", "OriginGate"]

PROBE_INTERVAL = 1.0  # seconds between probes of a down origin


class OriginGate:
    """Whether a credential may send a token request to an origin now."""

    def __init__(self) -> None:
        self.down_since: float | None = None
        self._next_probe = 0.0
        self._prober: object = None
        self._waiters: dict[object, tuple[float, Callable[[], None]]] = {}

    @property
    def down(self) -> bool:
        return self.down_since is not None

    def admit(self, now: float, key: object) -> bool:
        """True when ``key`` may send a request now: the origin is up, or ``key`` is
        the prober (the last one admitted, or the first to ask once the probe
        interval has passed)."""
        if self.down_since is None:
            return True
        if key == self._prober or now >= self._next_probe:
            self._prober = key
            self._next_probe = max(self._next_probe, now + PROBE_INTERVAL)
            return True
        return False

    def next_probe(self) -> float:
        return self._next_probe

    def wait(self, key: object, expires_at: float, wake: Callable[[], None]) -> None:
        """Wake ``key`` when the origin answers again (ordered by ``expires_at``;
        ``float('inf')`` for a credential holding no token)."""
        self._waiters[key] = (expires_at, wake)

    def forget(self, key: object) -> None:
        self._waiters.pop(key, None)

    def failed(self, now: float, retry_after: float | None = None) -> None:
        """A transient failure: down (again); the next probe after the interval, or
        after ``Retry-After`` when the endpoint asked for longer."""
        if self.down_since is None:
            self.down_since = now
        self._next_probe = max(self._next_probe, now + max(PROBE_INTERVAL, retry_after or 0.0))

    def succeeded(self) -> int:
        """An answer (a token, or a refusal of the credentials: the origin is up):
        release the waiting credentials, earliest expiry first; how many."""
        self.down_since, self._prober = None, None
        waiters = sorted(self._waiters.values(), key=lambda entry: entry[0])
        self._waiters.clear()
        for _expiry, wake in waiters:
            wake()
        return len(waiters)

    def __len__(self) -> int:
        return len(self._waiters)
