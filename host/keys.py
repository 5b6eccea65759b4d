"""Static X25519 keys for authenticated sessions: create, load, parse.

A private key file is PKCS#8 PEM, created owner-only (0600) and never
overwritten; ``FILE.pub`` next to it holds the public key as hex, which is
what the peer passes as ``--peer-key`` (the hex itself, or that file).
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from host.errors import UsageError


def write_secret(path: Path, secret: bytes) -> None:
    """Create ``path`` owner-only (0600) holding ``secret``, synced; never overwrite
    (``FileExistsError``)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(secret)
        f.flush()
        os.fsync(f.fileno())


def read_secret(path: Path) -> bytes:
    """The bytes of an owner-only file; ``UsageError`` if others may read it."""
    if path.stat().st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise UsageError(f"{path} is readable by others (chmod 600 {path})")
    return path.read_bytes()


def public_hex(key: X25519PrivateKey) -> str:
    return key.public_key().public_bytes_raw().hex()


def keygen(path: Path) -> str:
    """Write a new private key to ``path`` (0600) and its public hex to ``path.pub``."""
    key = X25519PrivateKey.generate()
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    try:
        write_secret(path, pem)
    except FileExistsError:
        raise UsageError(f"{path} exists; not overwriting a key") from None
    except OSError as exc:
        raise UsageError(f"cannot create {path}: {exc.strerror}") from None
    pub = public_hex(key)
    Path(f"{path}.pub").write_text(pub + "\n")
    return pub


def load_key(path: Path) -> X25519PrivateKey:
    """Load a private key written by ``keygen``; refuse one others can read."""
    try:
        data = read_secret(path)
    except OSError as exc:
        raise UsageError(f"cannot read key {path}: {exc.strerror}") from None
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError):
        raise UsageError(f"{path} is not a PEM private key (make one with haven keygen)") from None
    if not isinstance(key, X25519PrivateKey):
        raise UsageError(f"{path} is not an X25519 key")
    return key


def parse_peer_key(value: str) -> bytes:
    """A public key given as 64 hex digits, or a file holding them."""
    text = value.strip()
    if len(text) != 64 or not _is_hex(text):
        try:
            text = Path(value).read_text().strip()
        except (OSError, UnicodeDecodeError):
            raise UsageError(f"--peer-key {value!r} is neither 64 hex digits nor a readable "
                             "file holding them") from None
    if len(text) != 64 or not _is_hex(text):
        raise UsageError(f"--peer-key {value!r}: expected 64 hex digits (a .pub file)")
    return bytes.fromhex(text)


def _is_hex(text: str) -> bool:
    return all(c in "0123456789abcdefABCDEF" for c in text)
