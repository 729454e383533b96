"""kopf runs the operator's lifecycle: start-up, signals, clean shut-down.

The resources are watched by :mod:`kube` (:class:`kube.Watch`), not by kopf handlers:
a profile at N=1000 showed kopf's per-event processing (diff bases, cause detection)
taking a third of the event loop for events that are mostly echoes of our own status
patches, and our watch also reports when its first listing is complete, which restart
safety needs (no reconcile before every credential and stored token is known)."""

from __future__ import annotations

import logging
from typing import Any

import kopf

from itcare_operator.kube import load_config
from itcare_operator.namespaced import Controller

__all__: list[str] = []


@kopf.on.startup()
async def startup(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    settings.posting.enabled = False  # our events are posted by the controller, aggregated
    settings.scanning.disabled = True  # no CRD watching: needs no cluster-wide CRD access
    settings.watching.server_timeout = 300
    settings.watching.client_timeout = 330
    settings.networking.request_timeout = 60
    settings.peering.standalone = True  # leader election is ours (itcare_operator.leader)
    logging.getLogger("kopf.objects").setLevel(logging.WARNING)
    controller: Controller = memo.controller
    await memo.start_background(controller)


@kopf.on.cleanup()
async def cleanup(memo: kopf.Memo, **_: Any) -> None:
    await memo.stop_background()


@kopf.on.login()
def login(memo: kopf.Memo, **_: Any) -> kopf.ConnectionInfo:
    """Log kopf in with the cluster configuration of our own client (``--kubeconfig``,
    ``--context``); kopf's default login knows neither flag."""
    settings = memo.controller.settings
    config = load_config(settings.kubeconfig, settings.context)
    bearer = config.auth_settings().get("BearerToken")
    header = str(bearer.get("value") or "") if bearer else ""
    scheme, _sep, token = header.rpartition(" ")  # "Bearer <token>"
    return kopf.ConnectionInfo(
        server=config.host,
        ca_path=config.ssl_ca_cert,
        insecure=not config.verify_ssl,
        username=config.username or None,
        password=config.password or None,
        scheme=scheme or None,
        token=token or None,
        certificate_path=config.cert_file,
        private_key_path=config.key_file,
    )
