"""Logging set-up: plain text or one JSON object per line.

In JSON mode a line about a credential carries it as fields, as cert-manager's
``resource_namespace``/``resource_name`` do, so a log pipeline selects lines without
parsing messages: ``kind``, ``namespace`` (empty for a cluster-scoped kind), ``name``,
and ``event`` (what happened, a stable CamelCase word) with ``reason`` (a Refreshed
reason) on failures.

The credential being reconciled is a context variable (:func:`about`): every line
logged while its reconcile runs, from any module, carries it. :func:`fields` adds the
``event`` and ``reason`` of one line.

Only the fields named here and a record's ``extra=`` are written: a message never
holds a token or secret (the callers' rule), and neither does a field.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import datetime as dt
import logging
import sys
from collections.abc import Iterator, Mapping
from typing import Any

from pythonjsonlogger.json import JsonFormatter as _LibraryJsonFormatter

__all__ = ["JsonFormatter", "Resource", "ResourceFields", "about", "configure_logging", "fields"]

# Record attributes (LogRecord already has ``name``, the logger's) -> JSON keys.
_RENAMES = {
    "levelname": "level",
    "name": "logger",
    "exc_info": "exception",
    "resource_kind": "kind",
    "resource_namespace": "namespace",
    "resource_name": "name",
}


@dataclasses.dataclass(frozen=True, slots=True)
class Resource:
    """The object a log line is about."""

    kind: str
    namespace: str  # "" for a cluster-scoped kind
    name: str


_current: contextvars.ContextVar[Resource | None] = contextvars.ContextVar(
    "itcare_log_resource", default=None
)


@contextlib.contextmanager
def about(resource: Resource) -> Iterator[None]:
    """Lines logged inside the block (in this task) are about ``resource``."""
    token = _current.set(resource)
    try:
        yield
    finally:
        _current.reset(token)


def fields(
    event: str, reason: str | None = None, resource: Resource | None = None
) -> dict[str, str]:
    """The ``extra=`` of one log line: what happened, why, and (outside :func:`about`)
    about which object."""
    out = {"event": event}
    if reason:
        out["reason"] = reason
    if resource is not None:
        out.update(_resource_fields(resource))
    return out


def _resource_fields(resource: Resource) -> dict[str, str]:
    return {
        "resource_kind": resource.kind,
        "resource_namespace": resource.namespace,
        "resource_name": resource.name,
    }


class ResourceFields(logging.Filter):
    """Adds the current resource (:func:`about`), or the object of a kopf per-object
    line, to records that name none."""

    def filter(self, record: logging.LogRecord) -> bool:
        if hasattr(record, "resource_name"):
            return True
        resource = _current.get()
        ref = getattr(record, "k8s_ref", None)  # kopf's per-object loggers set it
        if resource is None and isinstance(ref, Mapping):
            resource = Resource(
                str(ref.get("kind", "")), str(ref.get("namespace") or ""), str(ref.get("name", ""))
            )
        if resource is not None:
            record.__dict__.update(_resource_fields(resource))
        return True


class JsonFormatter(_LibraryJsonFormatter):
    """``time``, ``level``, ``logger``, ``message``, then the record's fields."""

    def __init__(self) -> None:
        super().__init__(
            "{message}{levelname}{name}",
            style="{",
            rename_fields=_RENAMES,
            timestamp="time",
            json_ensure_ascii=False,
        )

    def process_log_record(self, log_data: dict[str, Any]) -> dict[str, Any]:
        when = log_data.pop("time")
        if isinstance(when, dt.datetime):
            when = when.isoformat(timespec="milliseconds")
        level = str(log_data.pop("level", "")).lower()
        return {"time": when, "level": level, **log_data}


def configure_logging(log_format: str, level: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(ResourceFields())
    if log_format == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # Libraries that could log request details stay at WARNING.
    for noisy in ("httpx", "httpcore", "urllib3", "kubernetes", "aiohttp.access"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
