"""Reading the API account out of the source Secret, with clear reasons when we cannot."""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping
from typing import Any

from itcare_operator.errors import CredentialError, Reason
from itcare_operator.token import ClientCredentials

__all__ = ["MAX_VALUE_BYTES", "SOURCE_LABEL", "SourceSecretError", "credentials_from_secret"]

SOURCE_LABEL = "itcare.cegedim.cloud/api-account"
MAX_VALUE_BYTES = 4096


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
    values = []
    for key in (client_id_key, client_secret_key):
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
