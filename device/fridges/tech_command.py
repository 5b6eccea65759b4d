"""``haven tech fridge``: the kiosk's side (``device.tech.service`` command ``fridge``).

The certificate must allow ``configure``. The request's ``op`` is ``add``,
``list`` or ``remove`` (``device.fridges.actions``); the reply is its result,
over the technician's encrypted session: a node key made here (``generate``)
goes to the tool and nowhere else. The audit entry names the action and the
fridge, never a key. The store and the kiosk's key are the runtime's
(``TechEnv.extra["runtime"]``), or those under ``EXTRA`` (tests).
"""

from __future__ import annotations

from typing import Any

from device.enrol import ensure_keys
from device.fridges.actions import act
from device.fridges.records import EnrolmentError, FridgeRecords
from device.tech.service import CommandError, Context, command

EXTRA = "fridges"  #: (store, the kiosk's X25519 public key)


def _store_and_key(ctx: Context) -> tuple[Any, bytes]:
    extra = ctx.env.extra
    if EXTRA in extra:
        store, public = extra[EXTRA]
        return store, public
    runtime = extra.get("runtime")
    store = getattr(runtime, "store", None)
    if runtime is None or store is None:
        raise CommandError("no-store", "this kiosk's store is not open")
    return store, ensure_keys(runtime.data)[0].public_key().public_bytes_raw()


@command("fridge", action="configure")
def fridge(ctx: Context, args: dict[str, Any]) -> dict[str, Any]:
    store, kiosk_public = _store_and_key(ctx)
    op = args.get("op")
    ctx.detail.update(op=str(op)[:16], name=str(args.get("name"))[:64])
    try:
        return act(FridgeRecords(store, clock=lambda: store.clock() / 1000), kiosk_public,
                   op, args.get("name"), args.get("key"), args.get("generate") is True,
                   args.get("model"), args.get("location"))
    except EnrolmentError as exc:
        raise CommandError(exc.code, str(exc)) from None
