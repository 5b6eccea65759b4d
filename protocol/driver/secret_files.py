"""Owner-only secret files: keys that the kiosk and the hub keep on disk.

A secret file is created whole or not at all: the bytes go to a temporary
file created with mode 0600 in the same directory, are synced, and the file
is linked into place, which fails if the name exists (a key is never
overwritten) and leaves no partial key after a power cut. The directory is
synced after.

Reading refuses, each with a message that says how to fix it, a file that
is missing, that group or others may read (``chmod 600``), that belongs to
another user, or (with ``size``) whose length is wrong.

``destroy_secret`` overwrites a key file with random bytes before unlinking
it; ``promote_secret`` replaces a key file by a new one beside it and
destroys the old, a power cut at any step leaving one of the two in place
and the old one, if it survives, under ``NAME.old`` for the next call.

``new_key_file`` and ``load_key_file`` keep an X25519 private key as PKCS#8
PEM with its public key, as hex, in ``FILE.pub``; ``parse_public_key``
reads such a public key given as hex or as a file holding it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import stat
import threading
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from protocol.driver.errors import SecretInvalid, SecretMissing, SecretPermissions

log = logging.getLogger("haven.keys")


def write_secret(path: Path, secret: bytes) -> None:
    """Create ``path`` owner-only (0600) holding ``secret``, durably and atomically;
    ``FileExistsError`` if it exists."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        try:
            os.write(fd, secret)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.link(tmp, path)  # fails if ``path`` exists: never overwrite a key
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
    with contextlib.suppress(OSError):  # the key is written; a directory may refuse fsync
        fsync_dir(path.parent)


def write_whole(path: Path, data: bytes) -> None:
    """Replace ``path`` with ``data``: a temporary file beside it (owner-only), synced,
    renamed over it, the directory synced. A power cut leaves the old file or the new."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
    with contextlib.suppress(OSError):  # written; a directory may refuse fsync
        fsync_dir(path.parent)


def destroy_secret(path: Path) -> bool:
    """Overwrite ``path`` with random bytes of its length, sync, unlink; False if there is
    none. A file that cannot be overwritten (made read-only) is still unlinked. (On an SD
    card the controller may keep the old bytes in flash it has not erased yet: what this
    defeats is reading them back through the file system.)"""
    path = Path(path)
    try:
        fd = os.open(path, os.O_WRONLY)
    except FileNotFoundError:
        return False
    except OSError as exc:
        log.warning("%s not overwritten (%s); unlinked only", path.name, exc.strerror)
    else:
        try:
            size = os.fstat(fd).st_size
            os.write(fd, os.urandom(size))
            os.fsync(fd)
        finally:
            os.close(fd)
    path.unlink()
    return True


def promote_secret(path: Path, new: Path) -> None:
    """``new`` takes ``path``'s place and the old ``path`` is destroyed. The old file is
    first linked as ``NAME.old``, then ``new`` renamed over ``path`` (atomic), the folder
    synced, and ``NAME.old`` destroyed: cut at any step, ``path`` holds the old key or
    the new one, and calling again finishes (with no ``new`` left: destroys ``NAME.old``
    if a cut left it)."""
    path, new = Path(path), Path(new)
    old = path.with_name(path.name + ".old")
    if new.exists():
        if old.exists() and not (path.exists() and os.path.samefile(old, path)):
            destroy_secret(old)  # left by an earlier swap: not the key about to go
        if path.exists() and not old.exists():
            os.link(path, old)
        os.replace(new, path)
        fsync_dir(path.parent)
    if destroy_secret(old):
        fsync_dir(path.parent)


def fsync_dir(directory: Path) -> None:
    """Make a directory's entries (a file created or renamed in it) durable."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def read_secret(path: Path, what: str = "secret file", size: int | None = None) -> bytes:
    """The bytes of an owner-only file; refuses a missing, too open or wrong-size one."""
    path = Path(path)
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise SecretMissing(f"{what} {path} is missing") from None
    if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise SecretPermissions(
            f"{what} {path} is readable by others (mode {stat.S_IMODE(st.st_mode):04o}); "
            f"run: chmod 600 {path}")
    if hasattr(os, "getuid") and st.st_uid != os.getuid():
        raise SecretPermissions(f"{what} {path} belongs to another user")
    data = path.read_bytes()
    if size is not None and len(data) != size:
        raise SecretInvalid(f"{what} {path} holds {len(data)} bytes, not {size}")
    return data


def read_at_most(path: Path, limit: int) -> bytes:
    """A small file's bytes; ``ValueError`` past ``limit`` bytes, read no further (a
    huge file, or a device such as /dev/zero given by mistake, never fills memory)."""
    with open(path, "rb") as f:
        data = f.read(limit + 1)
    if len(data) > limit:
        raise ValueError(f"{path} is longer than {limit} bytes")
    return data


def new_key_file(path: Path) -> str:
    """Write a new X25519 private key to ``path`` (0600) and its public hex to
    ``path.pub``; returns the hex. ``FileExistsError`` if ``path`` exists."""
    key = X25519PrivateKey.generate()
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    write_secret(path, pem)
    pub = key.public_key().public_bytes_raw().hex()
    Path(f"{path}.pub").write_text(pub + "\n")
    return pub


def load_key_file(path: Path) -> X25519PrivateKey:
    """The X25519 key in a file written by ``new_key_file``."""
    data = read_secret(path, "key")
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError):
        raise SecretInvalid(f"{path} is not a PEM private key (make one with haven keygen)"
                            ) from None
    if not isinstance(key, X25519PrivateKey):
        raise SecretInvalid(f"{path} is not an X25519 key")
    return key


def parse_public_key(value: str) -> bytes:
    """A public key given as 64 hex digits, or as a file holding them."""
    text = value.strip()
    if not _is_key_hex(text):
        try:
            text = Path(value).read_text().strip()
        except (OSError, UnicodeDecodeError):
            raise SecretInvalid(f"{value!r} is neither 64 hex digits nor a readable "
                                "file holding them") from None
    if not _is_key_hex(text):
        raise SecretInvalid(f"{value!r}: expected 64 hex digits (a .pub file)")
    return bytes.fromhex(text)


def _is_key_hex(text: str) -> bool:
    return len(text) == 64 and all(c in "0123456789abcdefABCDEF" for c in text)
