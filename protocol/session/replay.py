"""A sliding replay window for explicit nonces, and truncated-nonce expansion.

Theory of operation
-------------------
Frames on a lossy radio arrive late, twice, or not at all, so the receiver
cannot assume nonces come in order (Noise section 11.4). It remembers which of
the last ``size`` nonces below the highest one it has accepted, in a bitmap,
as RFC 6479 and WireGuard do: bit ``i`` stands for nonce ``highest - i``.

* A nonce above ``highest`` is fresh; accepting it slides the window.
* A nonce inside the window is fresh once; its bit is then set.
* A nonce at or below ``highest - size`` is too old: we no longer know
  whether we saw it, so it is refused.

``verdict`` only looks; ``accept`` changes state. The caller accepts a nonce
only after the frame's tag has verified, so a forged frame cannot move the
window (a forged huge nonce would otherwise lock out every real frame).

``expand`` recovers a full 64-bit nonce from its low ``bits`` bits, picking
the value nearest to ``highest + 1``: the packet-number decoding of RFC 9000
appendix A.3. A wrong guess cannot open a frame, because the nonce is the
AEAD nonce; so senders may put only a few bytes of the nonce on the wire.
"""

from __future__ import annotations

from typing import Literal

from protocol.errors import LocalProtocolError

DEFAULT_WINDOW = 2048
NONCE_LIMIT = 2**64  #: nonces are 64-bit counters (Noise section 5.1)

Verdict = Literal["fresh", "replayed", "too-old"]


class ReplayWindow:
    """Which recent nonces have been accepted. Memory is ``size`` bits."""

    def __init__(self, size: int = DEFAULT_WINDOW) -> None:
        if size < 1:
            raise LocalProtocolError("replay window size must be at least 1", "config")
        self.size = size
        self._mask = (1 << size) - 1
        self._highest = -1
        self._bits = 0

    @property
    def highest(self) -> int:
        """The highest nonce accepted so far, or -1 before the first."""
        return self._highest

    def verdict(self, nonce: int) -> Verdict:
        """Say whether ``nonce`` would be accepted, without changing anything."""
        if nonce > self._highest:
            return "fresh"
        age = self._highest - nonce
        if age >= self.size:
            return "too-old"
        return "replayed" if (self._bits >> age) & 1 else "fresh"

    def accept(self, nonce: int) -> None:
        """Record ``nonce`` as seen. Call only after its frame authenticated."""
        if self.verdict(nonce) != "fresh":
            raise LocalProtocolError(f"nonce {nonce} is not fresh", "replay")
        if nonce > self._highest:
            shift = nonce - self._highest
            # A jump wider than the window clears it; never build a huge int.
            self._bits = 1 if shift >= self.size else ((self._bits << shift) | 1) & self._mask
            self._highest = nonce
        else:
            self._bits |= 1 << (self._highest - nonce)

    def expand(self, truncated: int, bits: int) -> int:
        """The full nonce whose low ``bits`` bits are ``truncated`` (RFC 9000 A.3)."""
        if not 1 <= bits <= 64 or not 0 <= truncated < (1 << bits):
            raise LocalProtocolError("truncated nonce does not fit in its bits", "config")
        expected = self._highest + 1
        win = 1 << bits
        half = win // 2
        candidate = (expected & ~(win - 1)) | truncated
        if candidate + half <= expected and candidate + win < NONCE_LIMIT:
            return candidate + win
        if candidate > expected + half and candidate >= win:
            return candidate - win
        return candidate
