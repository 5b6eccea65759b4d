"""The hub server's bounds: caps, the key-exchange budget, refusals counted.

Theory of operation
-------------------
``Limits`` holds every bound ``haven hub serve`` takes as a flag, so a test
can run them short. ``TokenBucket`` rations key exchanges: each first
handshake message the server admits costs a token; tokens come back at a
rate up to a burst, so a flood costs the attacker a handshake frame for each
DH the hub does, and no more DH a second than the hub can spare. Who may
take which tokens (a share per address, a bucket reserved for addresses
kiosks were accepted from) is ``admission.HandshakeBudget``'s.

``max_rounds`` and the ``busy_*`` bounds are ``shedding.Shedder``'s: sync
rounds at once, and how long a kiosk turned away is told to wait.

``Refusals`` counts what the server turned away, by reason, since start (the
health socket reports it), and logs each reason at most once per
``log_interval`` with how many there were: a flood of strangers writes one
row a minute, never one row a connection. Logging goes through a callable
(the server hands rows to its worker pool; nothing here touches the store).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from host.hub.shedding import default_max_rounds


@dataclass
class Limits:
    max_connections: int = 20_000  #: TCP connections at once (the descriptor limit may cut it)
    max_unauthenticated_per_address: int = 64  #: not yet authenticated, from one IP
    handshake_rate: float = 200.0  #: key exchanges a second, sustained
    handshake_burst: int = 400  #: key exchanges at once
    #: Key exchanges a second (and at once) kept for addresses a kiosk was accepted from.
    handshake_reserved_rate: float = 100.0
    handshake_reserved_burst: int = 200
    #: Key exchanges a second (and at once) one source address may take, known or not.
    handshake_address_rate: float = 20.0
    handshake_address_burst: int = 40
    known_addresses: int = 65_536  #: addresses a kiosk was accepted from, remembered
    known_address_age: float = 86_400.0  #: seconds an address stays known after a kiosk
    handshake_deadline: float = 10.0  #: seconds from connect to authenticate
    idle_limit: float = 720.0  #: seconds an authenticated TCP session may be silent
    input_cap: int = 1 << 20  #: message bytes queued per connection before reading pauses
    output_cap: int = 4 << 20  #: bytes queued for one peer (unacknowledged + unwritten)
    workers: int = 4  #: threads that run the store's work
    watch_interval: float = 0.25  #: seconds between looks at the store (push, revocation)
    #: On PostgreSQL, where the store's changes are notified: seconds between looks when
    #: none was (``change_feed``).
    watch_backstop: float = 5.0
    log_interval: float = 60.0  #: at most one log row per refusal reason per interval
    #: Seconds between passes that make check-ins' claims records where none exists
    #: (0: none; ``haven hub promote`` does a pass by hand).
    promote_interval: float = 0.0
    fd_reserve: int = 64  #: descriptors kept back from connections (store, documents)
    accept_batch: int = 64  #: connections accepted per wakeup
    listener_retries: int = 10  #: reopening a failed listener, before the process gives up
    #: Sync rounds in progress at once; the next ones are told to come back later
    #: (``shedding``: 16 a processor, 64 to 256).
    max_rounds: int = field(default_factory=default_max_rounds)
    #: Seconds without a kiosk's message or work that end its round: more than a kiosk
    #: takes to answer the hub's reply (a round trip and its own work).
    round_quiet: float = 1.0
    busy_retry_min: float = 1.0  #: seconds: the least a busy answer asks a kiosk to wait
    busy_retry_max: float = 300.0  #: seconds: the most it asks
    round_guess: float = 1.0  #: seconds a round is taken to last until some were measured
    #: Seconds a round's first message may wait for a place before the kiosk is told busy.
    busy_hold: float = 2.0


class TokenBucket:
    """``take(now)``: True if a token was there (and is now spent)."""

    def __init__(self, rate: float, burst: float, now: float) -> None:
        self.rate, self.burst = rate, float(burst)
        self.tokens, self.at = float(burst), now

    def refill(self, now: float) -> float:
        """The tokens there are at ``now``."""
        if now > self.at:
            self.tokens = min(self.burst, self.tokens + (now - self.at) * self.rate)
            self.at = now
        return self.tokens

    def take(self, now: float) -> bool:
        if self.refill(now) >= 1.0:
            self.tokens -= 1.0
            return True
        return False


@dataclass
class _Reason:
    total: int = 0
    unlogged: int = 0
    logged_at: float = float("-inf")
    detail: str = ""


@dataclass
class Refusals:
    """Refusals by reason; ``log(reason, text)`` writes one row (rate limited here)."""

    log: Callable[[str, str], None]
    interval: float
    reasons: dict[str, _Reason] = field(default_factory=dict)

    def count(self, reason: str, detail: str, now: float) -> None:
        r = self.reasons.get(reason)
        if r is None:
            r = self.reasons[reason] = _Reason()
        r.total += 1
        r.unlogged += 1
        r.detail = detail
        if now - r.logged_at >= self.interval:
            self._write(reason, r, now)

    def flush(self, now: float, force: bool = False) -> None:
        """Log what is counted but not yet logged, once its interval has passed."""
        for reason, r in self.reasons.items():
            if r.unlogged and (force or now - r.logged_at >= self.interval):
                self._write(reason, r, now)

    def _write(self, reason: str, r: _Reason, now: float) -> None:
        many = f" ({r.unlogged} since the last row)" if r.unlogged > 1 else ""
        self.log(reason, f"{r.detail}{many}")
        r.unlogged, r.logged_at = 0, now

    def totals(self) -> dict[str, int]:
        return {reason: r.total for reason, r in sorted(self.reasons.items())}
