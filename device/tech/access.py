"""A technician's credential checked at the kiosk, and the port it binds.

Theory of operation
-------------------
``Technicians`` is the kiosk's side of SPEC.md "Technicians": its own facts
(id, site, the hub's Ed25519 key from its certificate), its trusted time
(``TrustedClock``), the hub's revocation list (``RevocationList``), the
service button (``presence``: held now) and its audit. ``authenticate``
checks a certificate and the technician's signature over the port's
challenge, in that order: the hub's signature and the certificate's shape,
revocation, the time window against trusted time, the scope, then the proof
of the technician's key. Any refusal raises ``Refused`` with a code and
changes nothing (a newer revocation list offered with it is kept: it is
hub-signed, and may be what revokes the very certificate offered).

The kiosk's wall clock plays no part. With no trusted time at all (fresh
from the image), a certificate is accepted only while the service button is
held (physical presence), and the audit entry says so; with only a lower
bound (rebooted since the hub's time was learnt) its window cannot be judged
from below, only its expiry (``trusted_time``).

``TechnicianAccess`` is what an accepted credential leaves on the console
port (``device.console.groups.Access``): it permits a command when the
certificate allows the command's action (``action_for``), and reads the
revocation list and trusted time again at each, so a certificate revoked
(by the next sync) or expired ends the binding at once. The console server
unbinds the port when it idles or closes.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from device.exc import DeviceError
from device.logs.fields import fields
from device.store import Store
from device.tech.revocations import RevocationList
from device.tech.trusted_time import Trusted, TrustedClock
from protocol.errors import ProtocolError
from protocol.sync import credential

log = logging.getLogger("haven.tech")

#: SMP group numbers and the commands whose action is not their op's (read: ``read``,
#: write: ``configure``). Provisioning and wiping add theirs here.
OS_GROUP, FS_GROUP, HAVEN_GROUP = 0, 8, 64
OS_RESET = 5
ACTION_OF: dict[tuple[int, int], str] = {(OS_GROUP, OS_RESET): "restart"}


def action_for(group: int, command: int, op: str) -> str:
    """The credential action an SMP command needs."""
    return ACTION_OF.get((group, command), "read" if op == "read" else "configure")


class Refused(DeviceError):
    """A technician's request refused; ``code``: why (``credential``'s codes, and
    ``presence-needed``)."""

    def __init__(self, message: str, code: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class Accepted:
    tech: credential.Technician
    how: str  #: how the time was judged: ``Trusted.describe()``, or "presence"


class Technicians:
    """The kiosk's technician checks. ``audit(who, what, result, detail, now_ms)``
    writes one audit entry (``device.audit.record`` on the store, bound by the caller)."""

    def __init__(self, *, device_id: str, site: str, hub_ed25519: bytes,
                 clock: TrustedClock, revocations: RevocationList,
                 presence: Callable[[], bool] = lambda: False,
                 audit: Callable[..., Any] | None = None) -> None:
        self.device_id, self.site, self.hub_ed25519 = device_id, site, hub_ed25519
        self.clock = clock
        self.revocations = revocations
        self.presence = presence
        self._audit = audit

    def authenticate(self, cert: bytes, sig: bytes, nonce: bytes, binding: bytes,
                     revocations: bytes | None = None) -> Accepted:
        """Check ``cert`` and the signature ``sig`` over this port's challenge."""
        if revocations is not None:
            try:
                self.revocations.offer(revocations)
            except ProtocolError as exc:
                raise Refused(f"revocation list refused: {exc}", exc.code) from None
        try:
            tech = credential.read_technician(cert, self.hub_ed25519)
        except ProtocolError as exc:
            raise Refused(str(exc), exc.code) from None
        now = self.clock.now()
        self._check(tech, now)
        try:
            credential.verify_auth(tech, sig, nonce, self.device_id, binding)
        except ProtocolError as exc:
            raise Refused(str(exc), exc.code) from None
        how = "presence" if now is None else now.describe()
        detail = {"technician": tech.name, "time": how}
        self.audit(str(tech.serial), "tech.auth", "ok:presence" if now is None else "ok",
                   detail, now)
        log.info("technician %s (certificate %d) accepted on the console (%s)", tech.name,
                 tech.serial, how, extra=fields(serial=tech.serial))
        return Accepted(tech, how)

    def still_good(self, tech: credential.Technician, action: str) -> bool:
        """Whether a bound certificate still allows ``action`` now."""
        try:
            self._check(tech, self.clock.now(), action, bound=True)
        except Refused as exc:
            log.info("technician certificate %d: %s", tech.serial, exc,
                     extra=fields(serial=tech.serial, code=exc.code))
            return False
        return True

    def _check(self, tech: credential.Technician, now: Trusted | None,
               action: str | None = None, bound: bool = False) -> None:
        if now is None and not bound and not self.presence():
            raise Refused("this kiosk has no trusted time yet (it never synced): hold the "
                          "service button while the credential is presented",
                          "presence-needed")
        try:
            credential.check(tech, now=0 if now is None else now.ms, site=self.site,
                             device_id=self.device_id, revoked=self.revocations.serials,
                             lower_bound=now is None or not now.exact, action=action)
        except ProtocolError as exc:
            raise Refused(str(exc), exc.code) from None

    def note_signed_time(self, statement: bytes, nonce: bytes) -> int:
        """A hub-signed time over our ``nonce``: it becomes the signed source."""
        try:
            hub_ms = credential.read_time(statement, self.hub_ed25519, nonce)
        except ProtocolError as exc:
            raise Refused(str(exc), exc.code) from None
        self.clock.note("signed", hub_ms)
        return hub_ms

    def audit(self, who: str, what: str, result: str, detail: dict[str, Any] | None = None,
              now: Trusted | None = None) -> None:
        if self._audit is not None:
            self._audit(who, what, result, detail, None if now is None else now.ms)


class TechnicianAccess:
    """A console port bound to an accepted credential (``groups.Access``)."""

    def __init__(self, technicians: Technicians, accepted: Accepted) -> None:
        self.technicians = technicians
        self.accepted = accepted

    @property
    def serial(self) -> int:
        return self.accepted.tech.serial

    def permits(self, group: int, command: int, op: str) -> bool:
        return self.technicians.still_good(self.accepted.tech, action_for(group, command, op))


def for_kiosk(store: Store, presence: Callable[[], bool] = lambda: False) -> Technicians:
    """The checks of the enrolled kiosk whose store is ``store``: its certificate's id,
    site and hub key; its audit chain. ``NotEnrolled`` before enrolment."""
    from device import audit
    from device.enrol import load

    cert = load(store.data).cert

    def record(who: str, what: str, result: str, detail: dict[str, Any] | None,
               now_ms: int | None) -> None:
        audit.record(store, who, what, result, detail, now_ms)

    return Technicians(device_id=cert.device_id, site=cert.site, hub_ed25519=cert.hub_ed25519,
                       clock=TrustedClock(store.data),
                       revocations=RevocationList(store.data, cert.hub_ed25519),
                       presence=presence, audit=record)
