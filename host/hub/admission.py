"""Who gets the hub's key exchanges: a fair handshake budget that strangers cannot use up.

Theory of operation
-------------------
A key exchange costs the hub its Diffie-Hellman work before it knows who is
asking, so the first handshake message of every TCP connection is admitted
or dropped (unanswered; the peer retries) by ``HandshakeBudget.admit``:

- **A share per source address** (``TokenBucket``, ``handshake_address_rate``
  a second up to ``handshake_address_burst``): no single address takes more,
  whether it is a stranger or a NAT that kiosks share. Buckets exist only
  for addresses that were admitted lately (an address without one has its
  whole share), so they number at most what the budget itself admits in a
  refill time; ``max_addresses`` bounds them anyway.
- **The general bucket** (``handshake_rate``, ``handshake_burst``): anyone,
  within its share.
- **The reserved bucket** (``handshake_reserved_rate``, ``handshake_reserved_burst``):
  only addresses in ``KnownAddresses``, from which a kiosk recently
  completed a hello the hub accepted (its certificate, key and enrolment
  checked). A known address takes from the reserved bucket first and from
  the general one when it is empty. Strangers from however many addresses
  drain the general bucket only, so a kiosk behind a known address still
  gets its key exchange at once; an attacker behind the same NAT as kiosks
  gets that address's share, no more.

``KnownAddresses`` is an LRU of at most ``size`` addresses, each forgotten
``max_age`` seconds after the last accepted hello or session end from it.
Nothing but the server's ``kiosk_seen`` (after a hello the sync role
accepted) enters it, so an attacker cannot put an address there, and it
never holds more than ``size`` entries.

IPv6 sources count by their /64 (one subscriber's prefix), IPv4-mapped ones
as IPv4. Serial ports are the hub's own lines: they are never asked.
"""

from __future__ import annotations

import ipaddress
from collections import OrderedDict

from host.hub.limits import TokenBucket


def source_key(host: str) -> str:
    """The key a source address counts under: IPv4 as is, IPv6 by its /64."""
    if ":" not in host:
        return host  # IPv4 (or a name): as it is, without parsing on every handshake
    try:
        ip = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return host
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network((int(ip) >> 64 << 64, 64)))
    return str(ip)


class KnownAddresses:
    """Addresses a kiosk was accepted from lately: bounded in number and in age."""

    def __init__(self, size: int, max_age: float) -> None:
        self.size, self.max_age = max(1, size), max_age
        self._at: OrderedDict[str, float] = OrderedDict()  #: oldest first

    def __len__(self) -> int:
        return len(self._at)

    def add(self, key: str, now: float) -> None:
        """A kiosk was accepted from ``key`` (or its session from there ended) at ``now``."""
        self._at[key] = now
        self._at.move_to_end(key)
        self._expire(now)
        while len(self._at) > self.size:
            self._at.popitem(last=False)

    def known(self, key: str, now: float) -> bool:
        self._expire(now)
        return key in self._at

    def _fresh(self, at: float, now: float) -> bool:
        return now - at < self.max_age

    def _expire(self, now: float) -> None:
        while self._at:
            key, at = next(iter(self._at.items()))
            if self._fresh(at, now):
                return
            del self._at[key]


class HandshakeBudget:
    """``admit(host, now)``: None if a key exchange from ``host`` may start now, else the
    refusal's reason (``handshake-address`` or ``handshake-rate``)."""

    def __init__(self, *, rate: float, burst: int, reserved_rate: float, reserved_burst: int,
                 address_rate: float, address_burst: int, known_size: int,
                 known_age: float, now: float) -> None:
        self.general = TokenBucket(rate, burst, now)
        self.reserved = TokenBucket(reserved_rate, reserved_burst, now)
        self.address_rate, self.address_burst = address_rate, float(address_burst)
        self.known = KnownAddresses(known_size, known_age)
        self.max_addresses = max(1, known_size)
        #: Per-address shares of addresses admitted lately, least recently used first.
        self.shares: OrderedDict[str, TokenBucket] = OrderedDict()
        self.admitted = {"reserved": 0, "general": 0}

    def kiosk_seen(self, host: str, now: float) -> None:
        """A kiosk's hello from ``host`` was accepted (or its session from there ended)."""
        self.known.add(source_key(host), now)

    def admit(self, host: str, now: float) -> str | None:
        key = source_key(host)
        self._forget_full(now)
        share = self.shares.get(key)
        if share is not None and share.refill(now) < 1.0:
            return "handshake-address"
        if self.known.known(key, now) and self.reserved.take(now):
            self.admitted["reserved"] += 1
        elif self.general.take(now):
            self.admitted["general"] += 1
        else:
            return "handshake-rate"
        if share is None:
            share = self.shares[key] = TokenBucket(self.address_rate, self.address_burst, now)
            while len(self.shares) > self.max_addresses:
                self.shares.popitem(last=False)
        else:
            self.shares.move_to_end(key)
        share.take(now)
        return None

    def _forget_full(self, now: float) -> None:
        """Shares untouched long enough to be whole again are forgotten (oldest first)."""
        whole = self.address_burst / self.address_rate if self.address_rate > 0 else float("inf")
        while self.shares:
            key, bucket = next(iter(self.shares.items()))
            if now - bucket.at < whole:
                return
            del self.shares[key]

    def report(self, now: float) -> dict[str, float | int]:
        return {"general_tokens": round(self.general.refill(now), 1),
                "reserved_tokens": round(self.reserved.refill(now), 1),
                "known_addresses": len(self.known), "address_shares": len(self.shares),
                "admitted_reserved": self.admitted["reserved"],
                "admitted_general": self.admitted["general"]}
