"""Noise handshakes (NN, XX, IK) and per-frame AEAD for a lossy link.

Theory of operation
-------------------
The Noise Protocol Framework, revision 34 (noiseprotocol.org/noise.html), by
the book, for ``Noise_{NN,XX,IK}_25519_ChaChaPoly_{SHA256,BLAKE2s}`` with the
``cryptography`` package's X25519, ChaCha20-Poly1305 (nonce ``4 zero bytes ||
n as 8 bytes LE``) and SHA-256 or BLAKE2s (sections 12.1-12.5). The
cacophony vectors in ``vectors/noise.json`` pin every byte.

* Section 4.3: ``HKDF(ck, ikm, n)`` is Noise's own construction over RFC
  2104 HMAC, not RFC 5869's API.
* Sections 5.1-5.3: ``CipherState`` (a key and a counter; no key: identity),
  ``SymmetricState`` (``ck``, ``h``, ``MixKey``, ``MixHash``,
  ``EncryptAndHash``, ``DecryptAndHash``, ``Split``) and ``HandshakeState``
  (here ``Handshake``). A failed decryption fails the handshake for good.
* Sections 7.4 and 7.5, the patterns::

      NN:  -> e                XX:  -> e                IK:  <- s
           <- e, ee                 <- e, ee, s, es          ...
                                    -> s, se                 -> e, es, s, ss
                                                             <- e, ee, se

  XX authenticates both static keys without either side knowing the other's;
  IK is what an enrolled kiosk uses (it knows the hub's key: one round trip,
  and its own identity travels encrypted); NN is encrypted but anonymous.
* Section 6: both sides hash the prologue first, so an offer placed there
  and altered on the way fails the handshake: no downgrade.

Transport: our frames ride a lossy, reordering radio *below* the ARQ, so we
follow section 11.4, "Out-of-order transport messages": each frame carries
its nonce explicitly, a per-transmission counter (a retransmission is a new
nonce), and ``FrameOpener`` rejects repeated nonces with a sliding replay
window (``replay.py``) that moves only after the tag verified. The nonce is
the AEAD nonce, so a header may carry only its low bits
(``FrameOpener.expand_nonce``). There is no rekey (section 11.3): a session
handshakes again long before 2**64-1 frames.

Resume: ``handshake_hash`` is the section 11.2 channel binding, equal on both
sides and unique, so it names the session; it is *not* secret. With NN anyone
can name a session, so a resume also proves a random secret that the old
session's encrypted channel carried.

Sans-I/O: no clock, no socket. Ephemeral keys are generated unless injected
(the test vectors inject them).
"""

from __future__ import annotations

import hmac as _consttime
from dataclasses import dataclass
from typing import Final

from protocol.crypto import (
    HASHES,
    ChaCha20Poly1305,
    InvalidTag,
    X25519PrivateKey,
    X25519PublicKey,
    hash_digest,
    hmac_digest,
)
from protocol.errors import LocalProtocolError, RemoteProtocolError
from protocol.session.replay import DEFAULT_WINDOW, ReplayWindow

DHLEN: Final = 32  #: X25519 public keys and shared secrets
HASHLEN: Final = 32  #: SHA-256 and BLAKE2s digests
KEY_SIZE: Final = 32  #: ChaCha20-Poly1305 keys
TAG_SIZE: Final = 16  #: Poly1305 tag: the per-frame overhead besides the nonce
MAX_MESSAGE: Final = 65535  #: Noise section 3: the largest handshake message
MAX_NONCE: Final = 2**64 - 2  #: the last usable nonce; 2**64-1 is reserved (section 5.1)

@dataclass(frozen=True)
class _Pattern:
    __match_args__ = ("pre_initiator", "pre_responder", "messages")
    pre_initiator: tuple[str, ...]
    pre_responder: tuple[str, ...]
    messages: tuple[tuple[str, ...], ...]  # even index: initiator writes


PATTERNS: Final[dict[str, _Pattern]] = {
    "NN": _Pattern((), (), (("e",), ("e", "ee"))),
    "XX": _Pattern((), (), (("e",), ("e", "ee", "s", "es"), ("s", "se"))),
    "IK": _Pattern((), ("s",), (("e", "es", "s", "ss"), ("e", "ee", "se"))),
}


# -- Section 4: hash functions and HKDF ---------------------------------------


def hkdf(name: str, chaining_key: bytes, ikm: bytes) -> tuple[bytes, bytes]:
    """Noise section 4.3 ``HKDF(chaining_key, ikm, 2)`` (not RFC 5869's API)."""
    temp_key = hmac_digest(name, chaining_key, ikm)
    out1 = hmac_digest(name, temp_key, b"\x01")
    out2 = hmac_digest(name, temp_key, out1 + b"\x02")
    return out1, out2


def _chacha_nonce(n: int) -> bytes:
    return b"\x00\x00\x00\x00" + n.to_bytes(8, "little")


def _aead(key: bytes) -> ChaCha20Poly1305:
    if len(key) != KEY_SIZE:
        raise LocalProtocolError("a cipher key is 32 bytes", "config")
    return ChaCha20Poly1305(key)


def _public(key: X25519PrivateKey) -> bytes:
    return key.public_key().public_bytes_raw()


# -- Section 5.1: CipherState --------------------------------------------------


class CipherState:
    """A key and an in-order counter nonce: what the handshake itself uses."""

    def __init__(self, key: bytes | None = None) -> None:
        self._aead: ChaCha20Poly1305 | None = None
        self.n = 0
        if key is not None:
            self.initialize_key(key)

    def initialize_key(self, key: bytes) -> None:
        self._aead = _aead(key)
        self.n = 0

    @property
    def has_key(self) -> bool:
        return self._aead is not None

    def encrypt_with_ad(self, ad: bytes, plaintext: bytes) -> bytes:
        if self._aead is None:
            return plaintext
        if self.n > MAX_NONCE:
            raise LocalProtocolError("nonce space exhausted", "nonce-exhausted")
        out = self._aead.encrypt(_chacha_nonce(self.n), plaintext, ad)
        self.n += 1
        return out

    def decrypt_with_ad(self, ad: bytes, ciphertext: bytes) -> bytes:
        """Raises ``RemoteProtocolError(code="auth")``; ``n`` moves only on success."""
        if self._aead is None:
            return ciphertext
        if self.n > MAX_NONCE:
            raise LocalProtocolError("nonce space exhausted", "nonce-exhausted")
        try:
            out = self._aead.decrypt(_chacha_nonce(self.n), ciphertext, ad)
        except InvalidTag:
            raise RemoteProtocolError("authentication tag did not verify", "auth") from None
        self.n += 1
        return out


# -- Section 5.2: SymmetricState -----------------------------------------------


class SymmetricState:
    """The chaining key ``ck``, the handshake hash ``h`` and a ``CipherState``."""

    def __init__(self, protocol_name: bytes, hash_name: str) -> None:
        self.hash_name = hash_name
        if len(protocol_name) <= HASHLEN:
            self.h = protocol_name + bytes(HASHLEN - len(protocol_name))
        else:
            self.h = hash_digest(hash_name, protocol_name)
        self.ck = self.h
        self.cipher = CipherState()

    def mix_key(self, ikm: bytes) -> None:
        self.ck, temp_k = hkdf(self.hash_name, self.ck, ikm)
        self.cipher.initialize_key(temp_k[:KEY_SIZE])

    def mix_hash(self, data: bytes) -> None:
        self.h = hash_digest(self.hash_name, self.h + data)

    def encrypt_and_hash(self, plaintext: bytes) -> bytes:
        ciphertext = self.cipher.encrypt_with_ad(self.h, plaintext)
        self.mix_hash(ciphertext)
        return ciphertext

    def decrypt_and_hash(self, ciphertext: bytes) -> bytes:
        plaintext = self.cipher.decrypt_with_ad(self.h, ciphertext)
        self.mix_hash(ciphertext)
        return plaintext

    def split(self) -> tuple[bytes, bytes]:
        """The two transport keys: initiator-to-responder, responder-to-initiator."""
        k1, k2 = hkdf(self.hash_name, self.ck, b"")
        return k1[:KEY_SIZE], k2[:KEY_SIZE]


# -- Section 5.3: HandshakeState -----------------------------------------------

_ACTIVE, _COMPLETE, _SPLIT, _ERROR = "active", "complete", "split", "error"


class Handshake:
    """One Noise handshake, sans-I/O: bytes in, bytes out.

    >>> from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
    >>> hub_key, kiosk_key = X25519PrivateKey.generate(), X25519PrivateKey.generate()
    >>> kiosk = Handshake("XX", initiator=True, static_key=kiosk_key, prologue=b"v1")
    >>> hub = Handshake("XX", initiator=False, static_key=hub_key, prologue=b"v1")
    >>> _ = hub.read_message(kiosk.write_message())
    >>> _ = kiosk.read_message(hub.write_message())
    >>> hub.read_message(kiosk.write_message(b"hello"))
    b'hello'
    >>> hub.remote_static == kiosk_key.public_key().public_bytes_raw()
    True

    ``remote_static`` given to an IK initiator is the responder's key it
    already knows (the pre-message). Given to anyone else, it pins the key the
    peer must send, and any other key fails the handshake. ``hash`` is
    ``"SHA256"`` (the default) or ``"BLAKE2s"``. ``ephemeral_key`` is for test
    vectors only: a reused ephemeral key breaks the handshake's secrecy.
    """

    def __init__(
        self,
        pattern: str = "XX",
        *,
        initiator: bool,
        static_key: X25519PrivateKey | None = None,
        remote_static: bytes | None = None,
        prologue: bytes = b"",
        ephemeral_key: X25519PrivateKey | None = None,
        hash: str = "SHA256",
    ) -> None:
        if pattern not in PATTERNS:
            raise LocalProtocolError(f"unknown pattern {pattern!r}", "config")
        if hash not in HASHES:
            raise LocalProtocolError(f"unknown hash {hash!r}", "config")
        p = PATTERNS[pattern]
        self._pattern = p
        self.initiator = initiator
        self.protocol_name = f"Noise_{pattern}_25519_ChaChaPoly_{hash}"
        mine = 0 if initiator else 1  # the initiator writes the even messages
        sends_s = "s" in (p.pre_initiator if initiator else p.pre_responder) or any(
            "s" in m for i, m in enumerate(p.messages) if i % 2 == mine
        )
        peer_pre_s = "s" in (p.pre_responder if initiator else p.pre_initiator)
        peer_sends_s = any("s" in m for i, m in enumerate(p.messages) if i % 2 != mine)
        if sends_s and static_key is None:
            raise LocalProtocolError(f"{pattern} needs our static key", "config")
        if not sends_s and static_key is not None:
            raise LocalProtocolError(f"{pattern} sends no static key", "config")
        if peer_pre_s and remote_static is None:
            raise LocalProtocolError(f"{pattern} needs the peer's static key", "config")
        if remote_static is not None:
            if not (peer_pre_s or peer_sends_s):
                raise LocalProtocolError(f"{pattern} has no remote static key", "config")
            if len(remote_static) != DHLEN:
                raise LocalProtocolError("a static public key is 32 bytes", "config")
        self._s = static_key
        self._e = ephemeral_key
        self._rs: bytes | None = bytes(remote_static) if peer_pre_s and remote_static else None
        self._pinned = bytes(remote_static) if peer_sends_s and remote_static else None
        self._re: bytes | None = None
        self._index = 0
        self._state = _ACTIVE
        self._keys: tuple[bytes, bytes] | None = None
        self._ss = SymmetricState(self.protocol_name.encode("ascii"), hash)
        self._ss.mix_hash(prologue)
        for side_is_initiator, tokens in ((True, p.pre_initiator), (False, p.pre_responder)):
            for _token in tokens:  # only "s" pre-messages in these patterns
                if side_is_initiator == initiator:
                    assert static_key is not None
                    self._ss.mix_hash(_public(static_key))
                else:
                    assert self._rs is not None
                    self._ss.mix_hash(self._rs)

    # -- state ---------------------------------------------------------------

    @property
    def is_complete(self) -> bool:
        return self._state in (_COMPLETE, _SPLIT)

    @property
    def is_my_turn(self) -> bool:
        """True when the next call must be ``write_message``."""
        return self._state == _ACTIVE and (self._index % 2 == 0) == self.initiator

    @property
    def remote_static(self) -> bytes | None:
        """The peer's static public key, once known (``None`` for NN)."""
        return self._rs

    @property
    def handshake_hash(self) -> bytes:
        """Section 11.2 channel binding: unique per handshake, public, not secret."""
        if not self.is_complete:
            raise LocalProtocolError("the handshake is not complete", "state")
        return self._ss.h

    def _expect(self, writing: bool) -> list[str]:
        if self._state == _ERROR:
            raise LocalProtocolError("the handshake has failed", "state")
        if self._state != _ACTIVE:
            raise LocalProtocolError("the handshake is already complete", "state")
        if self.is_my_turn != writing:
            verb = "write" if writing else "read"
            raise LocalProtocolError(f"not our turn to {verb} a handshake message", "state")
        return list(self._pattern.messages[self._index])

    def _advance(self) -> None:
        self._index += 1
        if self._index == len(self._pattern.messages):
            self._keys = self._ss.split()
            self._state = _COMPLETE

    def _dh(self, token: str) -> bytes:
        ours, theirs = {
            "ee": (self._e, self._re),
            "ss": (self._s, self._rs),
            "es": (self._e, self._rs) if self.initiator else (self._s, self._re),
            "se": (self._s, self._re) if self.initiator else (self._e, self._rs),
        }[token]
        assert ours is not None and theirs is not None  # guaranteed by the pattern
        try:
            return ours.exchange(X25519PublicKey.from_public_bytes(theirs))
        except ValueError:  # cryptography refuses an all-zero result: a low-order point
            raise RemoteProtocolError("the peer's key is invalid", "handshake") from None

    # -- messages ------------------------------------------------------------

    def write_message(self, payload: bytes = b"") -> bytes:
        """The next handshake message, carrying ``payload`` (encrypted once a key exists)."""
        tokens = self._expect(writing=True)
        overhead = DHLEN * tokens.count("e") + (DHLEN + TAG_SIZE) * tokens.count("s") + TAG_SIZE
        if len(payload) + overhead > MAX_MESSAGE:
            raise LocalProtocolError("handshake payload too large", "size")
        out = bytearray()
        try:
            for token in tokens:
                if token == "e":
                    if self._e is None:
                        self._e = X25519PrivateKey.generate()
                    pub = _public(self._e)
                    out += pub
                    self._ss.mix_hash(pub)
                elif token == "s":
                    assert self._s is not None
                    out += self._ss.encrypt_and_hash(_public(self._s))
                else:
                    self._ss.mix_key(self._dh(token))
            out += self._ss.encrypt_and_hash(payload)
        except RemoteProtocolError:  # the peer's ephemeral, met at "ee" or "se"
            self._state = _ERROR
            raise
        self._advance()
        return bytes(out)

    def read_message(self, message: bytes) -> bytes:
        """Process the peer's handshake message and return its payload.

        Any failure raises ``RemoteProtocolError(code="handshake")`` and ends
        the handshake: it cannot be retried with other bytes.
        """
        tokens = self._expect(writing=False)
        try:
            payload = self._read(tokens, bytes(message))
        except RemoteProtocolError as exc:
            self._state = _ERROR
            raise RemoteProtocolError(f"handshake failed: {exc}", "handshake") from None
        self._advance()
        return payload

    def _read(self, tokens: list[str], msg: bytes) -> bytes:
        if len(msg) > MAX_MESSAGE:
            raise RemoteProtocolError("message too long", "handshake")
        pos = 0
        for token in tokens:
            if token in ("e", "s"):
                size = DHLEN + (TAG_SIZE if token == "s" and self._ss.cipher.has_key else 0)
                if len(msg) - pos < size:
                    raise RemoteProtocolError("message truncated", "handshake")
                chunk, pos = msg[pos : pos + size], pos + size
                if token == "e":
                    self._re = chunk
                    self._ss.mix_hash(chunk)
                else:
                    rs = self._ss.decrypt_and_hash(chunk)
                    if self._pinned is not None and not _consttime.compare_digest(rs, self._pinned):
                        raise RemoteProtocolError("unexpected static key", "handshake")
                    self._rs = rs
            else:
                self._ss.mix_key(self._dh(token))
        rest = msg[pos:]
        if self._ss.cipher.has_key and len(rest) < TAG_SIZE:
            raise RemoteProtocolError("message truncated", "handshake")
        return self._ss.decrypt_and_hash(rest)

    # -- transport -----------------------------------------------------------

    def split(self) -> tuple[FrameSealer, FrameOpener]:
        """``(send, recv)`` for this side. Once only: a second pair would reuse nonces."""
        if self._state != _COMPLETE or self._keys is None:
            raise LocalProtocolError("split needs a complete, unsplit handshake", "state")
        k1, k2 = self._keys
        self._keys = None
        self._state = _SPLIT
        send, recv = (k1, k2) if self.initiator else (k2, k1)
        return FrameSealer(send), FrameOpener(recv)


# -- Section 11.4: out-of-order transport messages -----------------------------


class FrameSealer:
    """Seals frames with a per-transmission counter nonce (never repeats).

    ``start`` is the first nonce: 0 for a session (``Handshake.split``); a
    test of the last nonces starts near ``MAX_NONCE``.
    """

    def __init__(self, key: bytes, *, start: int = 0) -> None:
        if start < 0:
            raise LocalProtocolError("a nonce is never negative", "config")
        self._aead = _aead(key)
        self._next = start

    @property
    def next_nonce(self) -> int:
        """The nonce the next ``seal`` will use (for a header that carries it)."""
        return self._next

    def seal(self, header: bytes, plaintext: bytes) -> tuple[int, bytes]:
        """Return ``(nonce, ciphertext || 16-byte tag)``; ``header`` is the AD."""
        nonce = self._next
        if nonce > MAX_NONCE:
            raise LocalProtocolError("nonce space exhausted; handshake again", "nonce-exhausted")
        sealed = self._aead.encrypt(_chacha_nonce(nonce), plaintext, header)
        self._next = nonce + 1
        return nonce, sealed


@dataclass
class OpenerStats:
    """What a ``FrameOpener`` refused, by reason. Every refused frame is in one count."""

    __match_args__ = ("opened", "bad_tag", "replayed", "too_old")
    opened: int = 0  #: frames that authenticated and were fresh
    bad_tag: int = 0  #: forged or damaged frames (and impossible nonces)
    replayed: int = 0  #: nonces already accepted
    too_old: int = 0  #: nonces below the replay window

    @property
    def refused(self) -> int:
        return self.bad_tag + self.replayed + self.too_old


class FrameOpener:
    """Opens frames by explicit nonce, with a replay window of ``window`` nonces."""

    def __init__(self, key: bytes, *, window: int = DEFAULT_WINDOW) -> None:
        self._aead = _aead(key)
        self._window = ReplayWindow(window)
        self.stats = OpenerStats()

    @property
    def highest_nonce(self) -> int:
        """The highest nonce opened so far, or -1."""
        return self._window.highest

    def expand_nonce(self, truncated: int, bits: int) -> int:
        """The full nonce for one sent as its low ``bits`` bits (RFC 9000 A.3)."""
        return self._window.expand(truncated, bits)

    def open(self, nonce: int, header: bytes, ciphertext: bytes) -> bytes:
        """Return the plaintext, or raise ``RemoteProtocolError`` with code
        ``"auth"`` (bad tag) or ``"replay"`` (repeated or too old). Nothing but
        ``stats`` changes unless the frame authenticated and was fresh."""
        if not 0 <= nonce <= MAX_NONCE:
            self.stats.bad_tag += 1
            raise RemoteProtocolError("nonce out of range", "auth")
        verdict = self._window.verdict(nonce)
        if verdict == "replayed":
            self.stats.replayed += 1
            raise RemoteProtocolError(f"nonce {nonce} replayed", "replay")
        if verdict == "too-old":
            self.stats.too_old += 1
            raise RemoteProtocolError(f"nonce {nonce} is below the replay window", "replay")
        try:
            plaintext = self._aead.decrypt(_chacha_nonce(nonce), ciphertext, header)
        except InvalidTag:
            self.stats.bad_tag += 1
            raise RemoteProtocolError("authentication tag did not verify", "auth") from None
        self._window.accept(nonce)
        self.stats.opened += 1
        return plaintext
