"""The staff PIN: kept as a scrypt hash, checked without ever locking staff out.

Theory of operation
-------------------
A PIN is 6 to 12 digits. ``hash_pin`` keeps it as ``scrypt$N$r$p$salt$key``
(base64, no padding): scrypt with n = 2**14, r = 8, p = 1 (16 MiB, about
50 ms on a desktop core and a few times that on a Pi) over a random 16-byte
salt, through ``cryptography``'s ``Scrypt``. ``haven-kiosk staff-pin set``
writes the hash to ``DATA/staff-pin`` (owner-only, replaced whole); the TOML
file may hold a hash too (``staff-pin set --print``), never a PIN.

``PinGuard`` counts misses. Past ``free`` misses (a slip of the finger), each
miss makes every PIN wait (doubling from ``base`` up to ``cap``, a few
seconds) before the next try is checked: that bounds guessing to about one
try per ``cap`` seconds, and the right PIN is never refused for longer than
``cap``. From ``alert_after``
misses since the last right PIN, an alert stands on the staff screen (the
count and when the misses began, still shown after the right PIN until the
next one) and the misses are logged as warnings, at most once a minute with
the count. The count survives a restart in
``DATA/staff-pin-misses``, written at most once a ``persist_every`` seconds
(a minute by default), so a script's guesses do not become writes to the SD
card; a right PIN clears it.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import re
import time
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidKey
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

from device.exc import DeviceError
from protocol.driver.errors import DriverError
from protocol.driver.secret_files import fsync_dir, read_secret, write_secret

log = logging.getLogger("haven.staff")
PIN = re.compile(r"[0-9]{6,12}")
N, R, P = 2**14, 8, 1
PIN_FILE = "staff-pin"
MISSES_FILE = "staff-pin-misses"


class PinError(DeviceError, ValueError):
    """A PIN, or a stored PIN hash, that will not do; the message says why."""


def check_pin(pin: str) -> str:
    if not PIN.fullmatch(pin):
        raise PinError("a staff PIN is 6 to 12 digits")
    return pin


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.b64decode(text + "=" * (-len(text) % 4), validate=True)


def is_hash(text: str) -> bool:
    return text.startswith("scrypt$")


def hash_pin(pin: str, salt: bytes | None = None) -> str:
    """The stored form of ``pin`` (checked: 6 to 12 digits)."""
    salt = os.urandom(16) if salt is None else salt
    key = Scrypt(salt=salt, length=32, n=N, r=R, p=P).derive(check_pin(pin).encode())
    return f"scrypt${N}${R}${P}${_b64(salt)}${_b64(key)}"


def parse_hash(stored: str) -> tuple[int, int, int, bytes, bytes]:
    parts = stored.strip().split("$")
    try:
        if len(parts) != 6 or parts[0] != "scrypt":
            raise ValueError
        n, r, p = int(parts[1]), int(parts[2]), int(parts[3])
        salt, key = _unb64(parts[4]), _unb64(parts[5])
    except ValueError:
        raise PinError("not a staff PIN hash (scrypt$N$r$p$salt$key); make one with "
                       "haven-kiosk staff-pin set") from None
    if (n, r, p) != (N, R, P) or len(salt) < 16 or len(key) != 32:
        raise PinError(f"a staff PIN hash must use scrypt n={N}, r={R}, p={P}, a salt of "
                       "16 bytes or more and a 32-byte key")
    return n, r, p, salt, key


def verify_pin(pin: Any, stored: str) -> bool:
    """Whether ``pin`` is the PIN ``stored`` was made from (a slow check, off the loop)."""
    n, r, p, salt, key = parse_hash(stored)
    if not isinstance(pin, str) or not PIN.fullmatch(pin):
        Scrypt(salt=salt, length=32, n=n, r=r, p=p).derive(b"-")  # the same time either way
        return False
    try:
        Scrypt(salt=salt, length=32, n=n, r=r, p=p).verify(pin.encode(), key)
    except InvalidKey:
        return False
    return True


def write_pin_file(data: Path, pin: str) -> Path:
    """Keep ``pin``'s hash in ``data/staff-pin``, replacing any before it, whole."""
    path = Path(data) / PIN_FILE
    if not path.parent.is_dir():
        raise PinError(f"no kiosk data folder {path.parent} (run haven-kiosk init first)")
    stored = hash_pin(pin)
    new = path.with_name(PIN_FILE + ".new")
    new.unlink(missing_ok=True)
    write_secret(new, stored.encode() + b"\n")
    os.replace(new, path)
    fsync_dir(path.parent)
    return path


def read_pin_file(data: Path) -> str | None:
    """The hash kept in ``data/staff-pin``, or None when no PIN is set."""
    path = Path(data) / PIN_FILE
    if not path.exists():
        return None
    stored = read_secret(path, "staff PIN file").decode("ascii", "replace").strip()
    parse_hash(stored)
    return stored


class PinSource:
    """Where the staff PIN's hash comes from: the configuration (a hash, or a PIN given
    as a flag, hashed here and never written), else ``DATA/staff-pin``, read again
    when that file changes, so ``haven-kiosk staff-pin set`` needs no restart."""

    def __init__(self, data: Path | None, configured: str | None = None) -> None:
        self.path = Path(data) / PIN_FILE if data is not None else None
        self.fixed: str | None = None
        if configured:
            if is_hash(configured):
                parse_hash(configured)
                self.fixed = configured
            else:
                self.fixed = hash_pin(configured)
        self._seen: tuple[int, int] | None = None
        self._stored: str | None = None

    def current(self) -> str | None:
        """The hash in force, or None when no PIN is set (the staff screen is off)."""
        if self.fixed is not None or self.path is None:
            return self.fixed
        try:
            st = self.path.stat()
        except FileNotFoundError:
            self._seen, self._stored = None, None
            return None
        seen = (st.st_mtime_ns, st.st_ino)
        if seen != self._seen:
            try:
                self._stored = read_pin_file(self.path.parent)
            except (PinError, OSError, ValueError, DriverError) as exc:
                log.error("staff PIN: %s: %s; the staff screen is off", self.path, exc)
                self._stored = None
            self._seen = seen
        return self._stored


class PinGuard:
    """Misses of the staff PIN: a short wait after each, an alert, a count kept."""

    def __init__(self, data: Path | None = None, *, free: int = 2, base: float = 0.5,
                 cap: float = 3.0, alert_after: int = 5, persist_every: float = 60.0,
                 log_every: float = 60.0) -> None:
        self.free, self.base, self.cap, self.alert_after = free, base, cap, alert_after
        self.persist_every, self.log_every = persist_every, log_every
        self.path = Path(data) / MISSES_FILE if data is not None else None
        self.misses, self.first_miss = 0, 0.0
        #: The alert the last right PIN ended, shown until the next right PIN.
        self.previous: dict[str, Any] | None = None
        self._until = 0.0  # monotonic: no PIN is checked before then
        self._saved_at = float("-inf")
        self._saved_count = 0
        self._logged_at = float("-inf")
        if self.path is not None and self.path.exists():
            try:
                kept = json.loads(self.path.read_text())
                self.misses, self.first_miss = int(kept["misses"]), float(kept["since"])
                self._saved_count = self.misses
            except (OSError, ValueError, KeyError, TypeError):
                log.warning("staff PIN: the count of misses in %s is unreadable; "
                            "starting from none", self.path)
            if self.misses >= self.alert_after:
                log.warning("staff PIN: %d wrong PINs since %s (kept across a restart)",
                            self.misses, _when(self.first_miss))
                self._until = time.monotonic() + self.cap

    def wait(self, now: float) -> float:
        return max(0.0, self._until - now)

    def missed(self, now: float, wall: float | None = None, *, waited: bool = True) -> None:
        """A wrong PIN; ``waited=False``: a try refused unchecked during a wait, which
        counts toward the alert but does not lengthen the wait."""
        wall = time.time() if wall is None else wall
        if self.misses == 0:
            self.first_miss = wall
        self.misses += 1
        if waited and self.misses > self.free:
            self._until = now + min(self.cap, self.base * 2 ** (self.misses - self.free - 1))
        if self.misses >= self.alert_after and now - self._logged_at >= self.log_every:
            self._logged_at = now
            log.warning("staff PIN: %d wrong PINs since %s", self.misses,
                        _when(self.first_miss))
        if now - self._saved_at >= self.persist_every:
            self._save(now)

    def succeeded(self, now: float) -> None:
        """The right PIN: the count starts again; an alert it ends stays on the staff
        screen (``alert``) until the next right PIN, so staff see it when they log in."""
        self.previous = self.alert() if self.misses >= self.alert_after else None
        if self.previous is not None:
            log.warning("staff PIN: the right PIN after %d wrong ones", self.misses)
        self.misses, self._until = 0, 0.0
        if self._saved_count:
            self._save(now)

    def alert(self) -> dict[str, Any] | None:
        """What the staff screen shows, from ``alert_after`` misses on."""
        if self.misses < self.alert_after:
            return self.previous
        return {"misses": self.misses, "since": self.first_miss}

    def flush(self) -> None:
        """Save a count not saved yet (on a clean stop)."""
        if self.misses != self._saved_count:
            self._save(time.monotonic())

    def _save(self, now: float) -> None:
        if self.path is None:
            return
        self._saved_at, self._saved_count = now, self.misses
        try:
            if self.misses == 0:
                self.path.unlink(missing_ok=True)
                return
            tmp = self.path.with_name(MISSES_FILE + ".tmp")
            tmp.write_text(json.dumps({"misses": self.misses, "since": self.first_miss}))
            os.replace(tmp, self.path)
        except OSError as exc:  # a full or read-only disk: the count stays in memory
            log.error("staff PIN: cannot keep the count of misses: %s", exc.strerror)


def _when(wall: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(wall))
