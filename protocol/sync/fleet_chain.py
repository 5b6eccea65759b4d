"""The fleet key's later generations, from the hub to a kiosk, and which generation a
kiosk's write was made under (SPEC.md "Fleet key rotation").

Theory of operation
-------------------
When the hub rotates the fleet key, patient ids chain from one generation to
the next (``protocol.crdt.ids.rotated_id``), and each kiosk needs the keys of
every generation after the first, which its certificate carries. The hub's
welcome carries them (``fleet``): the first generation's fingerprint, which
the chain goes on from, and the keys of generations 2, 3..., as CBOR sealed
to the kiosk's X25519 key by HPKE (``certificate.seal``, under a label of its
own), so only that kiosk opens them. A kiosk whose first key has another
fingerprint refuses the chain. A kiosk before rotations ignores the field.

A kiosk that moved to a new generation makes every later write under it. It
says so in its hello and with each batch (``fleet``): each generation it
moved to, with its own stamp at the move (``[[generation, stamp], ...]``,
oldest first; back to 1 if its first key was installed again, which drops
the later ones a TPM holds). A write of that kiosk's node is of the generation it last
moved to before the write's stamp (``writer_generation``; none: the first),
whatever the session or batch it comes in: the hub remaps the subjects of
writes made under an older generation than its own.

Nothing here reads a clock or a file.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from protocol import strict_cbor
from protocol.crdt import ids
from protocol.errors import RemoteProtocolError
from protocol.sync.certificate import open_sealed, seal

if TYPE_CHECKING:
    from collections.abc import Sequence

    from protocol.crypto import X25519PrivateKey

CHAIN_INFO = b"haven/fleet-chain/v1"
#: The passport whose patient id is a fleet key's fingerprint (a kiosk's ``FleetKey``).
FINGERPRINT_INPUT = "FINGERPRINT0"
#: The most generations a chain or a kiosk's account of its moves holds.
MAX_GENERATIONS = 64


class ChainError(RemoteProtocolError):
    code = "bad-fleet-chain"


def fingerprint(key: bytes) -> bytes:
    """A fleet key's fingerprint: the patient id it gives ``FINGERPRINT_INPUT``."""
    return ids.patient_id(key, FINGERPRINT_INPUT).bytes


def seal_chain(first: bytes, later: Sequence[bytes], recipient: bytes) -> bytes:
    """The welcome's ``fleet``: the keys ``later`` (generations 2, 3...) after the first
    key ``first``, sealed to the kiosk's X25519 key ``recipient``."""
    return seal(strict_cbor.dumps([fingerprint(first), list(later)]), recipient, CHAIN_INFO)


def open_chain(sealed: bytes, key: X25519PrivateKey) -> tuple[bytes, list[bytes]]:
    """What ``seal_chain`` sealed to ``key``: (the first key's fingerprint, the later
    keys); ``ChainError`` if it does not open or is malformed."""
    try:
        body = strict_cbor.loads(open_sealed(sealed, key, CHAIN_INFO))
    except RemoteProtocolError as exc:
        raise ChainError(f"the hub's fleet key chain does not open: {exc}") from None
    if not (isinstance(body, list) and len(body) == 2 and type(body[0]) is bytes
            and len(body[0]) == 16 and isinstance(body[1], list)
            and 0 < len(body[1]) < MAX_GENERATIONS
            and all(type(k) is bytes and len(k) >= ids.MIN_KEY_SIZE for k in body[1])):
        raise ChainError("the hub's fleet key chain is malformed")
    return body[0], list(body[1])


def valid_moves(value: object) -> bool:
    """A hello's or batch's ``fleet``: ``[[generation, stamp], ...]``, at most
    ``MAX_GENERATIONS``, stamps growing, each move to another generation than the last
    (back to 1 too: a kiosk whose first key was installed again holds no later one)."""
    if not isinstance(value, list) or len(value) > MAX_GENERATIONS:
        return False
    last = (1, -1)
    for move in value:
        if not (isinstance(move, list) and len(move) == 2
                and all(type(v) is int for v in move)
                and move[0] >= 1 and move[0] != last[0] and move[1] > last[1]):
            return False
        last = (move[0], move[1])
    return True


def generation_of(moves: Sequence[Sequence[int]]) -> int:
    """The generation a kiosk is at, by its moves."""
    return moves[-1][0] if moves else 1


def key_file_name(first: str, generation: int) -> str:
    """The file that keeps generation ``generation`` of the fleet key beside the first
    generation's file ``first`` (``fleet.key``: ``fleet.2.key``, ``fleet.3.key``...)."""
    stem, dot, suffix = first.rpartition(".")
    return f"{stem}.{generation}.{suffix}" if dot else f"{first}.{generation}"


def writer_generation(moves: Sequence[Sequence[int]], stamp: int) -> int:
    """The generation a write stamped ``stamp`` by the kiosk that made ``moves`` was
    made under: the last it moved to before the stamp."""
    generation = 1
    for to, at in moves:
        if at < stamp:
            generation = to
    return generation
