"""kopf handlers: thin adapters from kopf's world to the :class:`Controller`."""

from __future__ import annotations

import logging
from typing import Any

import kopf

from itcare_operator.controller import Controller
from itcare_operator.kube import GROUP, PLURAL, VERSION

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


@kopf.on.event(GROUP, VERSION, PLURAL)
async def credential_event(event: kopf.RawEvent, memo: kopf.Memo, **_: Any) -> None:
    # async on purpose: kopf runs sync handlers in a thread pool, and the controller's
    # state belongs to the event loop.
    memo.controller.credential_event(event["type"], event["object"])
