"""``haven tech wipe``: the kiosk's side (``device.tech.service`` command ``wipe``).

The certificate must allow ``wipe``. In order, each refusal changing nothing:

1. What is unsynced is counted (``device.wipe.unsynced``); anything and no
   ``discard_unsynced`` in the request: refused ``unsynced`` with the counts.
2. Physical presence: the tool is told to hold the service button, and the
   kiosk reads its own button (``device.tech.presence``: held ``hold`` seconds,
   a press that begins within ``window``); else refused with why.
3. ``device.wipe.wipe``: the audit entry (``tech.wipe``, the certificate's
   serial, the counts discarded) is written and a sync round pushes it to the
   hub (at most ``AUDIT_WAIT`` seconds, and the runtime's ``round_limit``; the
   reply says whether it arrived); then
   the keys are destroyed. The command wrote its own entry, so the service
   writes none after it (it could not: the key that signs entries is gone).
4. The reply goes to the tool, then the runtime restarts (``after_reply``) and
   its start erases the data and makes a fresh kiosk (``device.wipe.finish``).

A kiosk revoked earlier has no keys left: its wipe needs no unsynced check
(what was unsynced went with the keys) and writes no audit entry.

The command finds what it needs in ``TechEnv.extra``: a ``Wiper`` under
``wipe``, or one made from the runtime under ``runtime`` (``runtime_wiper``).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from device import wipe as kiosk_wipe
from device.store import Store, StoreError
from device.tech import presence as pres
from device.tech.service import CommandError, Context, command

if TYPE_CHECKING:
    from device.runtime import Runtime

EXTRA = "wipe"
AUDIT_WAIT = 20.0  #: seconds a wipe waits for its audit entry to reach the hub
POLL = 0.05


@dataclass
class Wiper:
    """What the wipe command needs of the kiosk."""

    store: Store
    #: The service button's state now (``ServiceButton.is_pressed``); None: no button.
    pressed: Callable[[], bool] | None
    #: Push the outbox to the hub now, bounded; whether it is all acknowledged.
    sync: Callable[[], bool] | None = None
    window: float = pres.WINDOW
    hold: float = pres.HOLD
    #: Told once the keys are gone (the runtime takes no more check-ins).
    keys_gone: Callable[[str], None] = lambda why: None
    #: After the reply: the runtime's restart, whose start erases the data. None: the
    #: data is erased at once (``device.wipe.finish``, the store closed first).
    restart: Callable[[], None] | None = None
    stop: threading.Event = field(default_factory=threading.Event)


def runtime_wiper(runtime: Runtime, audit_wait: float | None = None) -> Wiper:
    """The ``Wiper`` of a running ``Runtime``: its store and button, a round asked for
    and awaited (``audit_wait``: at most ``AUDIT_WAIT``, and at most the runtime's
    ``round_limit``), its restart."""
    if audit_wait is None:
        audit_wait = min(AUDIT_WAIT, runtime.cfg.round_limit)
    store = runtime.store
    if store is None:
        raise CommandError("not-running", "the kiosk's runtime has no store open")

    def pressed() -> bool:
        hardware = runtime.hardware
        return hardware is not None and bool(hardware.button.is_pressed)

    def sync() -> bool:
        from device.runtime import outbox_entries

        end = time.monotonic() + audit_wait
        runtime.sync_now()
        while (left := outbox_entries(store)) and time.monotonic() < end:
            time.sleep(POLL)
        return left == 0

    # Presence as provisioning asks for it (``provision_window``, ``provision_hold``).
    return Wiper(store, pressed, sync, window=runtime.cfg.provision_window,
                 hold=runtime.cfg.provision_hold, keys_gone=runtime.keys_destroyed,
                 restart=runtime.restart)


def _wiper(ctx: Context) -> Wiper:
    made = ctx.env.extra.get(EXTRA)
    if isinstance(made, Wiper):
        return made
    runtime = ctx.env.extra.get("runtime")
    if runtime is None:
        raise CommandError("no-wipe", "this kiosk's runtime does not wipe")
    return runtime_wiper(runtime)


@command("wipe", action="wipe")
def wipe(ctx: Context, args: dict[str, Any]) -> dict[str, Any]:
    discard = args.get("discard_unsynced", False)
    if not isinstance(discard, bool):
        raise CommandError("bad-args", "discard_unsynced is true or false")
    w = _wiper(ctx)
    data = w.store.data
    ctx.what = "tech.wipe"
    revoked = kiosk_wipe.keys_destroyed(data) is not None
    lost = kiosk_wipe.unsynced_of(data) if revoked else kiosk_wipe.unsynced(w.store)
    ctx.detail = {"unsynced": lost.total}
    if not revoked:
        try:
            kiosk_wipe.check_unsynced(lost, discard)
        except kiosk_wipe.UnsyncedData as exc:
            raise CommandError("unsynced", str(exc)) from None
    ctx.note(f"hold the kiosk's service button for {w.hold:g} s, within {w.window:g} s, "
             "to wipe it")
    held = pres.await_hold(w.pressed, window=w.window, hold=w.hold, stop=w.stop)
    if not held.ok:
        raise CommandError(held.result, held.describe())
    try:
        if revoked:
            report = kiosk_wipe.wipe_without_keys(data, ctx.who)
        else:
            report = kiosk_wipe.wipe(w.store, who=ctx.who, discard_unsynced=discard,
                                     sync=w.sync, what=ctx.what)
    except kiosk_wipe.UnsyncedData as exc:  # written meanwhile (a check-in)
        raise CommandError("unsynced", str(exc)) from None
    except StoreError as exc:
        raise CommandError(exc.code, f"wipe failed: {exc}") from None
    ctx.audited = True  # its entry is written, and the key to sign another is gone
    w.keys_gone("wiped")
    if w.restart is not None:
        ctx.after_reply.append(w.restart)
    else:
        w.store.close()
        kiosk_wipe.finish(data)
    return {**report.as_dict(), "restarting": w.restart is not None}
