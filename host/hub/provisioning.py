"""The hub's side of online provisioning (``protocol.sync.provisioning``, SPEC.md
"Provisioning"): a technician's tool on the sync port asks, the hub answers.

``answer`` runs on the hub's job pool as any sync message does. It checks the
technician's certificate against the hub's own key, revocations and clock
(``check_ask``); without a request it answers the revocation list and the time;
with the kiosk's request it enrols the kiosk (``Hub.enroll``: the hub gives the
letter and the number) and answers its certificate. Every answer is logged in
the hub's event log with the technician's serial; a refusal changes nothing.
"""

from __future__ import annotations

import logging

from host.errors import HavenError
from host.hub import technician
from host.hub.hub import Hub
from protocol import messages
from protocol.errors import ProtocolError
from protocol.messages import Message
from protocol.sync import provisioning as prov
from protocol.sync.conversation import Reply

log = logging.getLogger("haven.hub")

TYPES = frozenset({prov.ASK.number})


def answer(hub: Hub, msg: Message, remote: bytes | None, now: int) -> list[Reply]:
    """The hub's answer to a ``prov-ask`` (see the module docstring)."""
    who = "a technician"
    try:
        ask = prov.check_ask(msg.get("cert"), msg.get("site"), msg.get("request"),
                             hub_ed25519=hub.ed_public, remote_static=remote, now=now,
                             revoked=frozenset(hub.store.revoked_technicians()))
        who = f"technician {ask.tech.serial} ({ask.tech.name})"
        cert = None
        if ask.request is not None:
            cert = hub.enroll(msg.get("request"), now)
            hub.store.log(ask.request.device_id, "provisioned",
                          f"site {ask.request.site!r} by {who}", now)
        revocations = technician.revocations(hub, now)
    except (ProtocolError, HavenError) as exc:
        code = getattr(exc, "code", "refused")
        hub.store.log(None, "provisioning-refused", f"{who}: {code}: {exc}", now)
        log.info("provisioning refused for %s (%s): %s", who, code, exc)
        return [(0, messages.encode(messages.make("prov-refused", code=str(code),
                                                  reason=str(exc)[:400])))]
    values = {"revocations": revocations, "time": now}
    if cert is not None:
        values["cert"] = cert
    return [(0, messages.encode(messages.make("prov-answer", **values)))]
