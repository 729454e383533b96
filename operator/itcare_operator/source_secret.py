"""Reading the API account out of the source Secret, with clear reasons when we cannot."""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping
from typing import Any

from itcare_operator.errors import CredentialError, Reason
from itcare_operator.token import ClientCredentials

__all__ = [
    "KEPT_KEYS",
    "MAX_VALUE_BYTES",
    "OVERSIZED_KEYS",
    "SOURCE_LABEL",
    "SourceSecretError",
    "credentials_from_secret",
    "keeps",
    "slim_source",
]

SOURCE_LABEL = "itcare.cegedim.cloud/api-account"
MAX_VALUE_BYTES = 4096
# Base64 characters of a value of MAX_VALUE_BYTES, padding included.
MAX_ENCODED = (MAX_VALUE_BYTES + 2) // 3 * 4
# Fields of a source Secret as kept in memory (see slim_source); not API fields.
KEPT_KEYS = "itcare.kept"
OVERSIZED_KEYS = "itcare.oversized"


def slim_source(secret: Mapping[str, Any], keys: set[str]) -> dict[str, Any]:
    """A source Secret as kept in memory: its identity, the API-account label and
    the values of ``keys`` (the keys some credential reads), each bounded: a value
    over :data:`MAX_VALUE_BYTES` is not kept, only named (reported as too large).
    A labelled Secret of 1 MiB then costs a few hundred bytes."""
    meta = secret.get("metadata") or {}
    labels = meta.get("labels") or {}
    data = secret.get("data") or {}
    kept: dict[str, str] = {}
    oversized: list[str] = []
    for key in sorted(keys):
        value = data.get(key) if isinstance(data, Mapping) else None
        if not isinstance(value, str):
            continue
        if len(value) > MAX_ENCODED:
            oversized.append(key)
        else:
            kept[key] = value
    return {
        "metadata": {
            "namespace": meta.get("namespace", ""),
            "name": meta.get("name", ""),
            "uid": meta.get("uid"),
            "resourceVersion": meta.get("resourceVersion"),
            "labels": {SOURCE_LABEL: labels[SOURCE_LABEL]} if SOURCE_LABEL in labels else {},
        },
        "data": kept,
        KEPT_KEYS: sorted(keys),
        OVERSIZED_KEYS: oversized,
    }


def keeps(secret: Mapping[str, Any], keys: tuple[str, ...]) -> bool:
    """Whether ``secret`` (as kept by :func:`slim_source`, or whole) holds what a
    credential reading ``keys`` needs; when False, read the Secret again."""
    kept = secret.get(KEPT_KEYS)
    return kept is None or all(key in kept for key in keys)


class SourceSecretError(CredentialError):
    reason = Reason.SOURCE_SECRET_INVALID


def credentials_from_secret(
    secret: Mapping[str, Any] | None,
    *,
    name: str,
    client_id_key: str,
    client_secret_key: str,
    require_label: bool,
) -> ClientCredentials:
    """``secret`` is the Secret as a dict (API JSON), or ``None`` when it does not exist."""
    if secret is None and require_label:
        raise SourceSecretError(
            f'Secret {name} not found among Secrets labelled {SOURCE_LABEL}="true" '
            "(it is absent, or lacks the label that allows the operator to read it)",
            reason=Reason.SOURCE_SECRET_NOT_FOUND,
        )
    if secret is None:
        raise SourceSecretError(f"Secret {name} not found", reason=Reason.SOURCE_SECRET_NOT_FOUND)
    labels = (secret.get("metadata") or {}).get("labels") or {}
    if require_label and labels.get(SOURCE_LABEL) != "true":
        raise SourceSecretError(
            f'Secret {name} lacks the label {SOURCE_LABEL}="true" '
            "that allows the operator to read it",
            reason=Reason.SOURCE_SECRET_NOT_LABELED,
        )
    data = secret.get("data") or {}
    oversized = secret.get(OVERSIZED_KEYS) or ()
    values = []
    for key in (client_id_key, client_secret_key):
        if key in oversized:
            raise SourceSecretError(
                f"Secret {name} key {key!r} is larger than {MAX_VALUE_BYTES} bytes"
            )
        encoded = data.get(key)
        if encoded is None:
            raise SourceSecretError(f"Secret {name} has no key {key!r}")
        try:
            raw = base64.b64decode(encoded, validate=True)
        except (binascii.Error, ValueError):
            raise SourceSecretError(f"Secret {name} key {key!r} is not valid base64") from None
        if len(raw) > MAX_VALUE_BYTES:
            raise SourceSecretError(
                f"Secret {name} key {key!r} is larger than {MAX_VALUE_BYTES} bytes"
            )
        try:
            value = raw.decode("utf-8").strip()
        except UnicodeDecodeError:
            raise SourceSecretError(f"Secret {name} key {key!r} is not UTF-8 text") from None
        if not value:
            raise SourceSecretError(f"Secret {name} key {key!r} is empty")
        if any(not ch.isprintable() for ch in value):
            raise SourceSecretError(f"Secret {name} key {key!r} holds control characters")
        values.append(value)
    return ClientCredentials(values[0], values[1])
