"""The one Secret-write loop: create or replace until the Secret holds what we want.

Both delivery adapters write through it (one target Secret; each copy of the cluster
kind). Optimistic concurrency does the locking: a replace carries the resourceVersion
we read, so an edit in between makes it fail (409) and we read again.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from itcare_operator.kube import KubeClient
from itcare_operator.kube_api import Conflict, KubeError, NotFound
from itcare_operator.target_secret import is_owned, needs_write, updated_secret

__all__ = ["TargetTaken", "write_secret"]

ATTEMPTS = 3


class TargetTaken(Exception):
    """The Secret exists and is not ours (found so while writing): never overwritten."""

    def __init__(self, current: Mapping[str, Any]) -> None:
        super().__init__("the Secret belongs to someone else")
        self.current = current


async def write_secret(
    kube: KubeClient,
    namespace: str,
    desired: Mapping[str, Any],
    current: Mapping[str, Any] | None,
    uid: str,
) -> Mapping[str, Any]:
    """Make ``namespace``/``desired.metadata.name`` hold ``desired``.

    ``current`` is the Secret as last seen (None: absent). Returns the Secret as
    stored (``current`` itself when nothing had to change: no request). Raises
    :class:`TargetTaken` if it belongs to someone else, :class:`kube_api.Invalid` if the
    API server refuses it (422), :class:`kube_api.KubeError` on other API errors.
    """
    name = desired["metadata"]["name"]
    for _attempt in range(ATTEMPTS):
        if current is None:
            try:
                return await kube.create_secret(namespace, desired)
            except Conflict:  # created meanwhile: read it, then update it if ours
                current = await kube.get_secret(namespace, name)
                continue
        if not is_owned(current, uid):
            raise TargetTaken(current)
        if not needs_write(current, desired):
            return current
        try:
            return await kube.replace_secret(namespace, updated_secret(current, desired))
        except NotFound:  # deleted since we read it (or what we held was stale)
            current = None
        except Conflict:  # changed since we read it: read it again
            current = await kube.get_secret(namespace, name)
    raise KubeError(f"Secret {name} kept changing under us")
