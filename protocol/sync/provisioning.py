"""Online provisioning at the hub: a technician's tool asks over the sync port.

Theory of operation
-------------------
SPEC.md "Provisioning". With ``haven tech provision --hub URL`` the
technician's laptop reaches the hub's sync port (``haven hub serve``) and
opens a Haven session (Noise ``XX``) with the X25519 form of the
technician's Ed25519 key (``tech_messages.x25519_public``), so the session's
remote static key is the certificate's. One message asks, one answers:

    tool                                                hub
    prov-ask (cert, site [, request])               ->
                                <- prov-answer (revocations, time [, cert])
                                   or prov-refused (code, reason)

Without a request the hub only vouches for the credential before the kiosk
is touched: its current signed revocation list and its time (ms), which the
tool takes to the kiosk. With the kiosk's enrolment request (made on the
kiosk, its private keys never leave it) the hub enrols the kiosk as ``haven
hub enroll`` does, the letter its own choice, and answers its certificate,
the fleet key sealed to the kiosk's key.

``check_ask`` is the hub's check, pure: the certificate signed by the hub,
the session's key, not revoked, within its window at the hub's clock,
``provision`` allowed, the site covered, and the request for that site.
"""

from __future__ import annotations

from dataclasses import dataclass

from protocol.errors import RemoteProtocolError
from protocol.messages import MessageSpec, register
from protocol.sync import certificate as sync_cert
from protocol.sync import credential
from protocol.tech_messages import x25519_public

ASK = register(MessageSpec(90, "prov-ask", {1: ("cert", bytes), 2: ("site", str)},
                           {3: ("request", bytes)}))
ANSWER = register(MessageSpec(91, "prov-answer", {1: ("revocations", bytes), 2: ("time", int)},
                              {3: ("cert", bytes)}))
REFUSED = register(MessageSpec(92, "prov-refused", {1: ("code", str), 2: ("reason", str)}))
MAX_SITE = 64


class ProvisioningError(RemoteProtocolError):
    code = "refused"


@dataclass(frozen=True)
class Ask:
    tech: credential.Technician
    request: sync_cert.Request | None


def check_ask(cert: bytes, site: str, request: bytes | None, *, hub_ed25519: bytes,
              remote_static: bytes | None, now: int, revoked: frozenset[int]) -> Ask:
    """The hub's check of a ``prov-ask`` (see above); ``ProtocolError`` with a code
    (``credential``'s, ``key-mismatch``, ``wrong-site``) if refused."""
    tech = credential.read_technician(cert, hub_ed25519)
    if remote_static is None or remote_static != x25519_public(tech.ed25519):
        raise ProvisioningError("the session's key is not the certificate's", "key-mismatch")
    if not 0 < len(site) <= MAX_SITE:
        raise ProvisioningError("a site is 1 to 64 characters", "bad-field")
    req = None
    device_id = ""
    if request is not None:
        req = sync_cert.read_request(request)
        if req.site != site:
            raise ProvisioningError(f"the request is for site {req.site!r}, not {site!r}",
                                    "wrong-site")
        device_id = req.device_id
    credential.check(tech, now=now, site=site, device_id=device_id, revoked=revoked,
                     action="provision")
    return Ask(tech, req)
