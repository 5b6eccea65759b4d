"""The hub's side of technicians: credentials, revocations and signed time.

Theory of operation
-------------------
``issue`` makes a technician's Ed25519 key, records the certificate in
``hub.db`` (``technicians``: its serial is the row's id, never given twice)
and signs it with the hub's key (``protocol.sync.credential``). What it
returns is the credential file's bytes: the technician's private key, the
certificate, the hub's public key and the revocation list of the moment, for
the technician's tool to carry to kiosks (``haven hub technician issue`` writes
it owner-only). The hub keeps no copy of the technician's private key.

``revoke`` marks a serial revoked and signs a new revocation list, numbered
one past the last: the list that travels to kiosks (with sync, in the
welcome to a kiosk whose hello names an older one, and with the technician's
tool) is the one in ``meta``, signed once when it changes, never at each sync.
``sign_time`` is the hub's time signed over a kiosk's nonce, for a kiosk with
no better clock.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from host.errors import UsageError
from host.hub.hub import Hub
from protocol.driver.wall_clock import wall_ms
from protocol.errors import ProtocolError
from protocol.sync import credential

DEFAULT_HOURS, MAX_HOURS = 24, credential.MAX_VALIDITY_MS // credential.HOUR_MS


def issue(hub: Hub, *, name: str, sites: Iterable[str] = (), kiosks: Iterable[str] = (),
          hours: float = DEFAULT_HOURS, actions: Iterable[str] = credential.ACTIONS,
          now_ms: int | None = None) -> tuple[int, bytes]:
    """A new technician credential: (serial, the credential file's bytes)."""
    now = wall_ms() if now_ms is None else now_ms
    sites, kiosks, actions = sorted(set(sites)), sorted(set(kiosks)), sorted(set(actions))
    if not 0 < hours <= MAX_HOURS:
        raise UsageError(f"--hours must be above 0 and at most {MAX_HOURS} (7 days)")
    if not sites and not kiosks:
        raise UsageError("name at least one site (--sites) or kiosk (--kiosks)")
    if bad := [t for t in sites + kiosks if not t.isprintable()]:
        raise UsageError(f"a site or kiosk is printable text, not {bad[0]!r}")
    if unknown := sorted(set(actions) - set(credential.ACTIONS)):
        raise UsageError(f"unknown actions {', '.join(unknown)}; known: "
                         f"{', '.join(credential.ACTIONS)}")
    if not actions:
        raise UsageError(f"name at least one action (--actions): {', '.join(credential.ACTIONS)}")
    # Printable: the name is written in kiosks' logs and audits, one line each.
    if not 0 < len(name) <= credential.MAX_NAME or not name.isprintable():
        raise UsageError(f"the name must be 1 to {credential.MAX_NAME} printable characters")
    key = Ed25519PrivateKey.generate()
    public = key.public_key().public_bytes_raw()
    expires = now + int(hours * credential.HOUR_MS)
    serial = hub.store.add_technician(name, sites, kiosks, actions, now, expires, public, now)
    try:
        cert = credential.issue(hub.ed_key, name=name, serial=serial, technician_ed25519=public,
                                not_before=now, expires=expires, sites=sites, kiosks=kiosks,
                                actions=actions)
    except ProtocolError as exc:
        raise UsageError(str(exc)) from None
    hub.store.log(None, "technician-issued", f"serial {serial} {name!r} sites "
                  f"{','.join(sites) or '-'} kiosks {','.join(kiosks) or '-'} {hours:g} h", now)
    return serial, credential.dump_file(credential.CredentialFile(
        key, cert, hub.ed_public, revocations(hub, now)))


def revoke(hub: Hub, serial: int, now_ms: int | None = None) -> bytes:
    """Revoke ``serial``; returns the new signed revocation list."""
    now = wall_ms() if now_ms is None else now_ms
    done = hub.store.revoke_technician(serial, now)
    if done is None:
        raise UsageError(f"no technician certificate {serial} (haven hub technician list)")
    if done:
        hub.store.log(None, "technician-revoked", f"serial {serial}", now)
        return _sign_list(hub, now)
    return revocations(hub, now)


def revocations(hub: Hub, now_ms: int | None = None) -> bytes:
    """The hub's current signed revocation list (made, as number 1, if there is none)."""
    held = hub.store.technician_revocations()
    if held is not None:
        return held[1]
    return _sign_list(hub, wall_ms() if now_ms is None else now_ms)


def _sign_list(hub: Hub, now: int) -> bytes:
    held = hub.store.technician_revocations()
    number = 1 if held is None else held[0] + 1
    doc = credential.sign_revocations(hub.ed_key, number, now, hub.store.revoked_technicians())
    hub.store.set_technician_revocations(number, doc)
    return doc


def listing(hub: Hub) -> list[dict[str, Any]]:
    return hub.store.technicians()


def sign_time(hub: Hub, nonce: bytes, now_ms: int | None = None) -> bytes:
    """The hub's time, signed over a kiosk's ``nonce``."""
    try:
        return credential.sign_time(hub.ed_key, nonce, wall_ms() if now_ms is None else now_ms)
    except ProtocolError as exc:
        raise UsageError(str(exc)) from None
