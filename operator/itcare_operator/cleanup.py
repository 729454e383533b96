"""Deleting the copies of ClusterITCareCredentials: unselected, finalized, orphaned.

Only Secrets the operator provably owns are deleted (label and owner-uid annotation,
see :func:`target_secret.is_owned`), each with its uid as a precondition so a Secret
re-created meanwhile under the same name is left alone.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping, Sequence
from typing import Any

from itcare_operator.kube import KubeClient
from itcare_operator.kube_api import Conflict, KubeError, NotFound
from itcare_operator.logs import Resource, fields
from itcare_operator.target_secret import (
    CLUSTER_CREDENTIAL_LABEL,
    CLUSTER_KIND,
    OWNER_UID_ANNOTATION,
    is_owned,
)

__all__ = ["FINALIZER", "CopyKey", "delete_copies", "delete_orphans", "finalize"]

log = logging.getLogger(__name__)

FINALIZER = "itcare.cegedim.cloud/cleanup"
DELETE_CONCURRENCY = 16  # copies deleted at once for one credential

CopyKey = tuple[str, str]  # (namespace, Secret name)
Known = dict[str, dict[CopyKey, Mapping[str, Any]]]  # credential name -> its copies


async def delete_copies(
    kube: KubeClient,
    owner: str,
    doomed: Sequence[tuple[str, str, Mapping[str, Any]]],
    known: Known,
) -> None:
    """Delete ``(namespace, name, secret)`` copies of credential ``owner``; raises the
    first API error (the reconcile is then retried) after trying them all."""
    slots = asyncio.Semaphore(DELETE_CONCURRENCY)

    async def delete(namespace: str, name: str, secret: Mapping[str, Any]) -> None:
        async with slots:
            await kube.delete_secret(namespace, name, (secret.get("metadata") or {}).get("uid"))
        known.get(owner, {}).pop((namespace, name), None)
        log.info(
            "ClusterITCareCredential %s: deleted its Secret %s/%s",
            owner,
            namespace,
            name,
            extra=fields("CopyDeleted"),
        )

    results = await asyncio.gather(*(delete(*d) for d in doomed), return_exceptions=True)
    for result in results:
        if isinstance(result, BaseException):
            raise result


async def finalize(
    kube: KubeClient, name: str, uid: str, body: Mapping[str, Any], known: Known
) -> bool:
    """The credential is being deleted: delete every copy (listed afresh: memory may
    miss some), then remove our finalizer. False when the credential changed under the
    patch (try again)."""
    listed = await kube.list_secrets(f"{CLUSTER_CREDENTIAL_LABEL}={name}")
    ours = [s for s in listed if is_owned(s, uid)]
    await delete_copies(
        kube,
        name,
        [(s["metadata"].get("namespace", ""), s["metadata"].get("name", ""), s) for s in ours],
        known,
    )
    meta = body.get("metadata") or {}
    finalizers = list(meta.get("finalizers") or [])
    if FINALIZER in finalizers:
        finalizers.remove(FINALIZER)
        try:
            await kube.set_cluster_finalizers(name, finalizers, meta.get("resourceVersion"))
        except NotFound:
            pass
        except Conflict:
            return False
    log.info(
        "ClusterITCareCredential %s: %d copies deleted; finalizer removed",
        name,
        len(ours),
        extra=fields("FinalizerRemoved"),
    )
    return True


async def delete_orphans(kube: KubeClient, known: Known, uids: set[str]) -> int:
    """Delete the copies whose owner uid is none of ``uids`` (its credential was
    deleted, finalizer and all, while the operator was away)."""
    deleted = 0
    for owner, copies in list(known.items()):
        about = Resource(CLUSTER_KIND, "", owner)
        for (namespace, secret_name), secret in list(copies.items()):
            meta = secret.get("metadata") or {}
            uid = (meta.get("annotations") or {}).get(OWNER_UID_ANNOTATION)
            if not uid or uid in uids:
                continue
            try:
                await kube.delete_secret(namespace, secret_name, meta.get("uid"))
            except KubeError as exc:
                log.warning(
                    "could not delete orphan %s/%s: %s",
                    namespace,
                    secret_name,
                    exc,
                    extra=fields("CopyDeleteFailed", resource=about),
                )
                continue
            deleted += 1
            log.info(
                "deleted %s/%s: its ClusterITCareCredential %s is gone",
                namespace,
                secret_name,
                owner,
                extra=fields("CopyDeleted", resource=about),
            )
    return deleted
