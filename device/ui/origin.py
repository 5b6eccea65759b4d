"""Who may ask the page server: the kiosk's own names, and the page's own origin.

Theory of operation
-------------------
The threat is a web page in a browser that can reach the kiosk, above all
through DNS rebinding: ``evil.example`` is made to resolve to 127.0.0.1, and
the attacker's page then talks to the kiosk as its own origin. Its browser
still believes it talks to ``evil.example`` and sends that name as Host. So:

* Host must be one of the names the kiosk serves under (``allowed_hosts``):
  its listening address, plus 127.0.0.1, localhost and [::1] when that
  address is a loopback or wildcard one, each with the port (and without it
  on port 80). Anything else is ``bad-host``: this alone stops rebinding.
* An Origin header, when present, must be the page's own (``http://`` + the
  Host); ``null`` (sandboxed frames, opaque origins) is refused. So is a
  request whose ``Sec-Fetch-Site`` is neither ``same-origin`` nor ``none``.
  Both are ``bad-origin``, on every method.
* A POST without Origin is let through. Browsers send Origin on every POST
  (the Fetch standard; ``null`` where they hide the origin), so a request
  without one does not come through a browser: it comes from a program on
  the kiosk (``haven-kiosk hw``, curl, the benchmarks), which could send any
  Origin it liked and has no browser's ambient rights to borrow.
"""

from __future__ import annotations

from collections.abc import Mapping
from ipaddress import ip_address

LOOPBACK_NAMES = ("127.0.0.1", "localhost", "[::1]")
FETCH_SITES = (None, "same-origin", "none")


def allowed_hosts(host: str, port: int, extra: tuple[str, ...] = ()) -> frozenset[str]:
    """The Host header values the kiosk answers to, listening on ``host:port``;
    ``extra`` adds names (without the port)."""
    names = {_bracket(host)}
    try:
        addr = ip_address(host)
        local = addr.is_loopback or addr.is_unspecified
    except ValueError:
        local = host == "localhost"
    if local:
        names.update(LOOPBACK_NAMES)
    names.update(extra)
    names.discard("")
    out = {f"{n.lower()}:{port}" for n in names}
    if port == 80:
        out.update(n.lower() for n in names)
    return frozenset(out)


def refusal(headers: Mapping[str, str], hosts: frozenset[str]) -> str | None:
    """Why a request with ``headers`` (names in lower case) is refused, or None."""
    host = headers.get("host", "").lower()
    if host not in hosts:
        return "bad-host"
    origin = headers.get("origin")
    if origin is not None and origin.lower() != "http://" + host:
        return "bad-origin"
    if headers.get("sec-fetch-site") not in FETCH_SITES:
        return "bad-origin"
    return None


def _bracket(host: str) -> str:
    return f"[{host}]" if ":" in host and not host.startswith("[") else host
