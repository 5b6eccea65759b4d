"""The kiosk's side of enrolment: its own keys, its request, its certificate.

Theory of operation
-------------------
``ensure_keys`` creates the kiosk's X25519 key (its session identity, and
what the fleet key is sealed to) and Ed25519 key (it signs its batch chain)
as owner-only files in the data directory; the private keys never leave it.
``write_request`` writes ``enrolment.req``: the public keys, node, site and
the letter asked for (or none: the hub gives the first free at the site),
signed by the Ed25519 key. ``install`` checks that a
certificate names this kiosk's keys and node, opens the sealed fleet key,
installs it with the letter the hub assigned (``device.store.create``
refuses a new fleet key once patients exist) and the kiosk number (its short
patient codes' first part; a certificate from before kiosk numbers has none,
and the hub's welcome gives it), and keeps the certificate.

Provisioned offline (SPEC.md "Offline approvals"), a kiosk is given one of
the hub's approvals: ``install_approval`` checks it against the hub's key
the kiosk trusts and its trusted time, and takes what it reserved (the node,
the site, the letter, the kiosk number); it keeps the approval and writes its
request. It holds no fleet key then: the laptop that brought the approval
never holds it. Its first sync presents both (``enrolment``, the hello's
``enrol``), and the hub answers with the certificate, which ``install``
installs as any other, the sealed fleet key with it. What needs the fleet key
waits until then: the store keeps the key made at ``init`` until the
certificate's replaces it, and derives no patient id from it meanwhile
(``Store.await_fleet_key``: a check-in's passport or code is sealed to the
hub, which completes it), so the certificate's key is taken whatever was
checked in.

``init`` on a kiosk the hub told it is a suspected clone re-provisions it
(``start_as_new_kiosk``, SPEC.md "Clones"): a new node, to which every
write the hub did not acknowledge is written again, new keys, no
certificate, and sync checkpoints from nothing. ``enroll`` then makes it a
kiosk of its own, and its writes reach the hub under that identity.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from device.store import Store, StoreError
from device.store.keys import read_key
from device.sync.state import SyncState, alert_of
from protocol import strict_cbor
from protocol.driver.secret_files import write_secret
from protocol.errors import ProtocolError
from protocol.sync import approval as sync_approval
from protocol.sync import certificate as sync_cert
from protocol.sync.conversation import SUSPECTED_CLONE

X_KEY, ED_KEY = "kiosk_x25519.key", "kiosk_ed25519.key"
REQUEST, CERT, APPROVAL = "enrolment.req", "certificate", "approval"


class NotEnrolled(StoreError):
    code = "not-enrolled"


def ensure_keys(data: Path) -> tuple[X25519PrivateKey, Ed25519PrivateKey]:
    """The kiosk's keys, made where missing; ``KeysDestroyed`` (``device.wipe``) and none
    made while a wipe or a revocation destroyed them."""
    if not (data / X_KEY).exists() or not (data / ED_KEY).exists():
        from device.wipe import refuse_if_destroyed

        refuse_if_destroyed(data)
    if not (data / X_KEY).exists():
        write_secret(data / X_KEY, X25519PrivateKey.generate().private_bytes_raw())
    if not (data / ED_KEY).exists():
        write_secret(data / ED_KEY, Ed25519PrivateKey.generate().private_bytes_raw())
    return (X25519PrivateKey.from_private_bytes(read_key(data / X_KEY, "kiosk key")),
            Ed25519PrivateKey.from_private_bytes(read_key(data / ED_KEY, "kiosk key")))


def start_as_new_kiosk(store: Store) -> int | None:
    """A new identity for a kiosk told it is a suspected clone (see above); None if
    it was not told so. Returns how many writes go again under the new node. Each
    step can run again: the alert, cleared last, says the work is not done."""
    if alert_of(store.data) != SUSPECTED_CLONE:
        return None
    again = store.take_new_node()
    for name in (X_KEY, ED_KEY, CERT, REQUEST):
        (store.data / name).unlink(missing_ok=True)
    ensure_keys(store.data)
    state = SyncState(store.data)
    try:
        state.start_over()
    finally:
        state.close()
    return again


def write_request(store: Store, *, hub_letter: bool = False) -> Path:
    """Write ``DIR/enrolment.req`` for this kiosk, asking for its letter, or with
    ``hub_letter`` for the first letter free at its site; returns its path."""
    x_key, ed_key = ensure_keys(store.data)
    st = store.status()
    doc = sync_cert.make_request(store.node, st["site"], None if hub_letter else st["letter"],
                                 x_key, ed_key)
    path = store.data / REQUEST
    path.write_bytes(doc)
    return path


def install(store: Store, cert_doc: bytes) -> sync_cert.Certificate:
    """Check and install a certificate from the hub."""
    x_key, _ = ensure_keys(store.data)
    try:
        cert = sync_cert.read_certificate(cert_doc)
        if cert.x25519 != x_key.public_key().public_bytes_raw() or cert.node != store.node:
            raise StoreError("this certificate was issued to another kiosk", "wrong-certificate")
        fleet = sync_cert.open_sealed(cert.fleet_sealed, x_key)
    except ProtocolError as exc:
        raise StoreError(f"bad certificate: {exc}", exc.code) from None
    store.configure(cert.site, cert.letter, fleet)
    if cert.kiosk_number is not None:
        store.set_kiosk_number(cert.kiosk_number)
    path = store.data / CERT
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(cert_doc)
    tmp.replace(path)
    return cert


def install_approval(store: Store, doc: bytes, hub_ed25519: bytes,
                     now: int) -> sync_approval.Approval:
    """Provision this fresh kiosk from an offline approval (see above): ``hub_ed25519``
    is the hub's key the kiosk trusts (from its image, or provisioning under physical
    presence), ``now`` its trusted time (an expired approval is refused). ``StoreError``
    and nothing changed for a bad, forged or expired approval, or a kiosk enrolled or
    in use already."""
    try:
        approval = sync_approval.read_approval(doc, hub_ed25519, now)
    except ProtocolError as exc:
        raise StoreError(f"bad approval: {exc}", exc.code) from None
    if (store.data / CERT).exists():
        raise StoreError("this kiosk is enrolled already: it takes no approval",
                         "already-provisioned")
    # refused for a kiosk that wrote anything but audit entries, which follow it
    store.take_node(approval.node, lambda: ensure_keys(store.data)[1])
    store.await_fleet_key(approval.hub_x25519)
    store.configure(approval.site, approval.letter)
    store.set_kiosk_number(approval.kiosk_number)
    write_request(store)
    path = store.data / APPROVAL
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(doc)
    tmp.replace(path)
    return approval


def enrolment(data: Path) -> bytes | None:
    """What the first sync of a kiosk provisioned offline presents in its hello (its
    approval and request); None for a kiosk with a certificate, or no approval."""
    if (data / CERT).exists():
        return None
    try:
        return sync_approval.enrolment((data / APPROVAL).read_bytes(),
                                       (data / REQUEST).read_bytes())
    except FileNotFoundError:
        return None


@dataclass(frozen=True)
class Identity:
    x_key: X25519PrivateKey
    ed_key: Ed25519PrivateKey
    #: Its certificate; for a kiosk provisioned offline and not enrolled yet, one made of
    #: its approval (``raw`` empty, no fleet key): what its first sync needs of it.
    cert: sync_cert.Certificate
    #: What that first sync presents (``enrolment``); None once the kiosk has its
    #: certificate.
    enrol: bytes | None = None


def _approved(data: Path) -> Identity | None:
    """The identity of a kiosk provisioned offline that has no certificate yet."""
    enrol = enrolment(data)
    if enrol is None:
        return None
    x_key, ed_key = ensure_keys(data)
    doc = (data / APPROVAL).read_bytes()
    try:
        # checked against the trusted hub key when it was installed: read with its own
        body = strict_cbor.loads(doc, max_size=sync_approval.MAX_DOC)[0]
        hub = strict_cbor.loads(body, max_size=sync_approval.MAX_DOC)[9]
        ap = sync_approval.read_approval(doc, hub)
    except (ProtocolError, LookupError, TypeError) as exc:
        raise StoreError(f"bad approval: {exc}", getattr(exc, "code", "bad-approval")) from None
    cert = sync_cert.Certificate(
        ap.node, ap.site, ap.letter, x_key.public_key().public_bytes_raw(),
        ed_key.public_key().public_bytes_raw(), ap.hub_x25519, ap.hub_ed25519, b"",
        ap.issued, 0, ap.kiosk_number, b"")
    return Identity(x_key, ed_key, cert, enrol)


def load(data: Path) -> Identity:
    """The kiosk's keys and certificate, or ``NotEnrolled``. A kiosk provisioned
    offline syncs before it has a certificate: its first sync enrols it."""
    try:
        doc = (data / CERT).read_bytes()
    except FileNotFoundError:
        approved = _approved(data)
        if approved is not None:
            return approved
        raise NotEnrolled(f"kiosk in {data} is not enrolled; run: haven-kiosk enroll") from None
    x_key, ed_key = ensure_keys(data)
    try:
        cert = sync_cert.read_certificate(doc)
    except ProtocolError as exc:
        raise StoreError(f"bad certificate: {exc}", exc.code) from None
    return Identity(x_key, ed_key, cert)
