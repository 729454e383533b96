"""One object never stops the others.

Whatever one Secret, credential, Namespace or token answer holds, the start-up
listing, the event routing and every other credential go on: an unexpected error
while handling one object is logged once with the object's kind, namespace and name
(never the exception's text: it may quote the object's content), counted in
``itcare_object_errors_total`` and swallowed here. The reconcile path has its own net
(:meth:`Reconciler.reconcile`), which also reports the failure in the object's status.
"""

from __future__ import annotations

import logging
import traceback
from collections.abc import Callable, Mapping
from typing import Any

from prometheus_client import Counter

__all__ = ["describe", "guarded"]

log = logging.getLogger(__name__)


def describe(exc: BaseException) -> str:
    """The exception's class and where it was raised: enough to find the bug, and
    nothing of its message (which may hold what the object held)."""
    frames = traceback.extract_tb(exc.__traceback__)
    where = f" at {frames[-1].filename.rsplit('/', 1)[-1]}:{frames[-1].lineno}" if frames else ""
    return f"{type(exc).__name__}{where}"


def guarded(
    kind: str,
    stage: str,
    take: Callable[[str | None, Any], None],
    errors: Counter,
) -> Callable[[str | None, Any], None]:
    """``take(type, body)`` that logs, counts and swallows an unexpected error."""

    def call(type_: str | None, body: Any) -> None:
        try:
            take(type_, body)
        except Exception as exc:  # the safety net of one object (STYLE 18)
            meta = (body.get("metadata") if isinstance(body, Mapping) else None) or {}
            namespace = meta.get("namespace") if isinstance(meta, Mapping) else None
            name = meta.get("name") if isinstance(meta, Mapping) else None
            errors.labels(kind, stage).inc()
            log.error(
                "%s %s%s skipped: unexpected %s; the other objects go on",
                kind,
                f"{namespace}/" if isinstance(namespace, str) and namespace else "",
                name if isinstance(name, str) else "?",
                describe(exc),
            )

    return call
