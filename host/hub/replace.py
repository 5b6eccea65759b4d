"""Replacing a dead kiosk: a new kiosk at its site takes over its letter from a day.

Theory of operation
-------------------
``haven hub enroll REQUEST --replaces OLD [--from DAY]`` enrols a new kiosk with
the old one's letter; ``haven hub replace OLD --by NEW [--from DAY] --out CERT``
does the same for a kiosk enrolled already, and writes its certificate again with
that letter (``haven-kiosk enroll CERT`` installs it: same keys, same fleet key,
the new letter). Either way, in one transaction of the hub's (``HubStore.retire``),
the old kiosk is retired: revoked, and at its next contact, if it ever makes one,
it destroys its keys (``device.wipe``); the replacement is kept (``replacements``,
hub.db migration 6) and the hub's log says it (``replaced``).

Queue numbers are the letter and a counter that starts again each day at each
kiosk. Two kiosks with one letter on the same day would hand out the same
numbers, so ``DAY`` (UTC, YYYY-MM-DD; default today) must come after the day the
old kiosk was last heard from, and not after today: the letter passes when the
certificate is given, and a kiosk cannot yet switch letters at midnight by
itself (enrol the new kiosk on that day). The new kiosk keeps its own kiosk
number (the first part of its short patient codes): the old one's codes stay the
old one's, and no code is ever given twice.

The old kiosk's data that never reached the hub, if its SD card can be read,
comes in through a relay bundle under the old identity's audit (the field-team
issue); nothing here moves it.
"""

from __future__ import annotations

import datetime
from typing import TYPE_CHECKING

from host.errors import HavenError, UsageError
from protocol.driver.wall_clock import wall_ms
from protocol.sync import certificate as sync_cert
from protocol.sync.scope import utc_day as day_of

if TYPE_CHECKING:
    from host.hub.hub import Hub


def parse_day(text: str) -> str:
    try:
        return datetime.date.fromisoformat(text).isoformat()
    except ValueError:
        raise UsageError(f"--from {text!r}: a day is YYYY-MM-DD") from None


def take_over(hub: Hub, old_id: str, new_id: str, site: str, letter: str | None,
              from_day: str | None, now: int) -> str:
    """Retire ``old_id`` for ``new_id`` at ``site`` (see above); returns the letter the
    new kiosk takes. ``letter``: the one its request asks for (None: any). Refused with
    one line, nothing changed, for a kiosk unknown or at another site, a letter asked
    for that is not the old one's, or a day that is not after the old kiosk's last."""
    old = hub.store.device(old_id)
    if old is None:
        raise UsageError(f"no kiosk {old_id} (haven hub status lists them)")
    if old_id == new_id:
        raise UsageError(f"kiosk {old_id} cannot replace itself")
    done = hub.store.replacement(old_id)
    if done is not None and done["by"] != new_id:
        raise HavenError(f"kiosk {old_id} was replaced by {done['by']} from "
                         f"{done['from_day']} already")
    if old.site != site:
        raise HavenError(f"kiosk {old_id} is at site {old.site!r}, the new kiosk at "
                         f"{site!r}: a replacement takes over a letter at its own site")
    if letter is not None and letter.upper() != old.letter:
        raise HavenError(f"the request asks for letter {letter.upper()}; replacing kiosk "
                         f"{old_id} gives letter {old.letter} (leave the letter to the hub)")
    today = day_of(now)
    day = today if from_day is None else parse_day(from_day)
    if done is None:
        if day > today:
            raise UsageError(f"--from {day} is after today ({today}): the letter passes "
                             "with the certificate; replace the kiosk on that day")
        last = day_of(old.last_seen) if old.last_seen else None
        if last is not None and day <= last:
            raise HavenError(f"kiosk {old_id} was last heard from on {last}: its queue "
                             f"numbers of that day would clash with the new kiosk's; "
                             f"take over letter {old.letter} from a later day (--from)")
    try:
        hub.store.retire(old_id, new_id, site, old.letter, day, now)
    except ValueError as exc:
        raise HavenError(str(exc)) from None
    if done is None:
        hub.store.log(old_id, "replaced", f"retired (revoked: replaced) by kiosk {new_id}, "
                      f"which takes letter {old.letter} at site {site!r} from {day}", now)
    return old.letter


def replace(hub: Hub, old_id: str, new_id: str, from_day: str | None = None,
            now_ms: int | None = None) -> bytes:
    """``haven hub replace``: ``new_id``, enrolled already, takes over ``old_id``'s letter;
    returns its certificate again, with that letter (and its own kiosk number)."""
    now = wall_ms() if now_ms is None else now_ms
    new = hub.store.device(new_id)
    if new is None:
        raise UsageError(f"no kiosk {new_id}: enrol it with haven hub enroll REQUEST "
                         f"--replaces {old_id}")
    if new.state != "approved":
        raise HavenError(f"kiosk {new_id} is {new.state}: it cannot take over a letter")
    letter = take_over(hub, old_id, new_id, new.site, None, from_day, now)
    req = sync_cert.Request(new.node, new.site, letter, new.x25519, new.ed25519)
    serial = int(hub.store.get_meta("serial") or 0) + 1
    hub.store.set_meta("serial", serial)
    hub.store.log(new_id, "enrolled", f"site {new.site!r} letter {letter} number "
                  f"{new.kiosk_number} (replacing kiosk {old_id})", now)
    return sync_cert.issue(req, hub.ed_key, hub.x_public, hub.fleet_key, letter, now, serial,
                           new.kiosk_number)
