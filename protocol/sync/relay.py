"""Relay bundles: a sync round's messages carried by hand, sealed and signed.

Theory of operation
-------------------
SPEC.md, "Relay bundles". A kiosk with no link syncs through a field team's
USB stick: it writes the messages of a sync round it would have sent (its
hello, its pull, every batch the hub has not acknowledged) into a bundle; the
hub feeds them to its own role (``HubSync``) and writes the replies (the
welcome, the changes in the kiosk's scope, the acks) into an answer bundle
that the kiosk feeds to its role (``KioskSync``). Nothing here is a second
sync format: a bundle is a list of sync messages, and exactly once comes
from the batch chain and the cursor as it does live.

What this module adds is the envelope, without I/O:

* ``body``: direction (up: kiosk to hub; down: the hub's answer), the kiosk's
  id, the hub's X25519 key, a per-direction sequence, the writer's time (the
  hub's is the hub-signed time a kiosk learns), which up bundle a down bundle
  answers, its piece of that answer, and the messages;
* signed with the writer's Ed25519 key (the kiosk's, which its certificate
  names; the hub's, which the kiosk's certificate names);
* padded, then HPKE-sealed (``certificate.seal``) to the reader's X25519 key
  (the hub's; the kiosk's), so a courier sees only a size bucket
  (``bucket``: Padmé, at most 12 % more) and ``MAGIC``.

A per-direction ``ReplayWindow`` (the last ``WINDOW`` sequences, as IPsec's)
reports a bundle read again; the chain makes it harmless anyway.
"""

from __future__ import annotations

from dataclasses import dataclass

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from protocol import strict_cbor
from protocol.errors import ProtocolError, RemoteProtocolError
from protocol.sync.batches import head_signed
from protocol.sync.certificate import open_sealed, seal

#: Every relay file starts with this and its direction (a foreign file does not).
MAGIC = b"HAVEN-RELAY\x01"
UP, DOWN = 0, 1
HEAD = len(MAGIC) + 1  #: what ``direction_of`` reads
_INFO = {UP: b"haven/relay/up/v1", DOWN: b"haven/relay/down/v1"}
_LABEL = b"haven/relay-bundle/v1\x00"
#: The most a bundle's body carries: pieces stay far below FAT32's 4 GiB a file.
PIECE_BYTES = 64 << 20
#: The smallest file on the stick.
MIN_FILE = 4096
#: Sequences remembered behind the highest applied, per direction.
WINDOW = 64
_SEAL_OVERHEAD = 32 + 16  # HPKE: the encapsulated key, the AEAD tag
_LEN = 4  # the signed document's length, before it and the padding


class RelayError(RemoteProtocolError):
    """A relay file refused (``code``: foreign, unopened, damaged, replayed...)."""

    code = "relay"


@dataclass(frozen=True)
class Bundle:
    direction: int
    device: str
    hub_x25519: bytes
    seq: int
    time_ms: int
    messages: list[bytes]
    answers: int = 0  #: a down bundle: the up bundle's sequence it answers
    piece: int = 1  #: a down bundle: its piece of that answer, from 1 ...
    pieces: int = 1  #: ... of this many

    def body(self) -> bytes:
        return strict_cbor.dumps({1: self.direction, 2: self.device, 3: self.hub_x25519,
                                  4: self.seq, 5: self.time_ms, 6: self.messages,
                                  7: self.answers, 8: [self.piece, self.pieces]})


def message_bytes(messages: list[bytes]) -> int:
    """What ``messages`` add to a body (their CBOR byte strings), for cutting pieces."""
    return sum(len(m) + 9 for m in messages)


def bucket(size: int) -> int:
    """The file size ``size`` bytes are padded to: Padmé (at most 12 % more, and leaks
    O(log log size) bits), ``MIN_FILE`` at least."""
    if size <= MIN_FILE:
        return MIN_FILE
    e = size.bit_length() - 1
    s = e.bit_length()
    mask = (1 << (e - s)) - 1
    return (size + mask) & ~mask


def seal_bundle(bundle: Bundle, key: Ed25519PrivateKey, recipient: bytes) -> tuple[bytes, int]:
    """The file's bytes, and how many of them are padding."""
    body = bundle.body()
    signed = strict_cbor.dumps([body, key.sign(_LABEL + body)])
    plain = len(signed).to_bytes(_LEN, "big") + signed
    size = bucket(HEAD + _SEAL_OVERHEAD + len(plain))
    pad = size - HEAD - _SEAL_OVERHEAD - len(plain)
    return (MAGIC + bytes((bundle.direction,))
            + seal(plain + bytes(pad), recipient, _INFO[bundle.direction]), pad)


def direction_of(data: bytes) -> int | None:
    """The direction a relay file names (UP, DOWN); None: not a relay file."""
    if len(data) < HEAD or not data.startswith(MAGIC) or data[len(MAGIC)] not in _INFO:
        return None
    return data[len(MAGIC)]


def open_bundle(data: bytes, direction: int, key: X25519PrivateKey) -> tuple[Bundle, bytes]:
    """The bundle in a file sealed to ``key``, and the signature to check
    (``verify``) once the writer's key is known. ``RelayError``: ``foreign`` (not a
    relay file), ``unopened`` (sealed to another key, or damaged where it cannot tell)
    or ``damaged``."""
    if direction_of(data) != direction:
        raise RelayError("not a relay bundle" if direction_of(data) is None
                         else "a bundle of the other direction", "foreign")
    try:
        plain = open_sealed(data[HEAD:], key, _INFO[direction])
    except ProtocolError:
        raise RelayError("does not open with this key: made for another hub or kiosk, "
                         "truncated or altered", "unopened") from None
    n = int.from_bytes(plain[:_LEN], "big")
    try:
        body, sig = strict_cbor.loads(plain[_LEN:_LEN + n], max_size=PIECE_BYTES + 4096)
        return _read(body, direction), sig
    except (ProtocolError, TypeError, ValueError) as exc:
        raise RelayError(f"damaged: {exc}", "damaged") from None


def _read(body: bytes, direction: int) -> Bundle:
    obj = strict_cbor.loads(body, max_size=PIECE_BYTES + 4096)
    piece = obj[8]
    bundle = Bundle(obj[1], obj[2], obj[3], obj[4], obj[5], obj[6], obj[7], *piece)
    ints = (bundle.direction, bundle.seq, bundle.time_ms, bundle.answers, bundle.piece,
            bundle.pieces)
    if (not all(type(x) is int for x in ints) or type(bundle.device) is not str
            or type(bundle.hub_x25519) is not bytes or not isinstance(bundle.messages, list)
            or not all(type(m) is bytes for m in bundle.messages)
            or not 1 <= bundle.piece <= bundle.pieces or bundle.seq < 1):
        raise ValueError("a field is missing or of the wrong type")
    if bundle.direction != direction:
        raise ValueError("a bundle of the other direction")
    return bundle


def verify(bundle: Bundle, sig: bytes, public: bytes) -> None:
    """``RelayError`` (``forged``) unless ``public`` signed ``bundle``."""
    if not head_signed(public, sig, _LABEL + bundle.body()):
        raise RelayError(f"bundle {bundle.seq} of kiosk {bundle.device} is not signed by "
                         "its writer", "forged")


class ReplayWindow:
    """The sequences applied in one direction: the highest, and which of the ``WINDOW``
    before it (a bit each). ``state``/``from_state`` keep it as two integers."""

    def __init__(self, top: int = 0, mask: int = 0) -> None:
        self.top, self.mask = top, mask

    @classmethod
    def from_state(cls, state: object) -> ReplayWindow:
        if isinstance(state, list) and len(state) == 2 and all(type(x) is int for x in state):
            return cls(state[0], state[1])
        return cls()

    def state(self) -> list[int]:
        return [self.top, self.mask]

    def check(self, seq: int) -> None:
        """``RelayError`` (``replayed``) if ``seq`` was applied, or is too old to tell."""
        if seq > self.top:
            return
        if self.top - seq >= WINDOW:
            raise RelayError(f"bundle {seq} is older than the last {WINDOW} applied",
                             "replayed")
        if self.mask >> (self.top - seq) & 1:
            raise RelayError(f"bundle {seq} was applied already", "replayed")

    def accept(self, seq: int) -> None:
        if seq > self.top:
            self.mask = (self.mask << (seq - self.top) | 1) & ((1 << WINDOW) - 1)
            self.top = seq
        else:
            self.mask |= 1 << (self.top - seq)
