"""Debug bundles: what a kiosk gives a field team, signed, optionally sealed.

Theory of operation
-------------------
A bundle is a ZIP file a field worker can open on a laptop: JSON sections
(``manifest.json``, ``status.json``, ``audit.json``, ``link.json``,
``metrics.json``, ``crashes.json``, ``redaction.json``), the logs as JSON lines
(``logs.jsonl``), the kiosk's certificate as the hub signed it (``kiosk.cert``),
``index.json`` (each member's SHA-256 and size) and ``index.sig``: the kiosk's
Ed25519 signature over ``LABEL || index.json``. Checking one is: every member
named by the index and no other, each matching its hash, the signature by the
certificate's key, and the certificate by the hub's key (or the certificate the
checker holds for that kiosk). The manifest names the kiosk, the request's nonce
(a pull answered with another request's bundle is a replay) and the key it was
sealed to, if any.

Sealed, the ZIP is one HPKE base-mode message (``protocol.sync.certificate``'s
suite) to an X25519 key: ``SEALED_MAGIC || recipient public key || enc || ct``.
The recipient key in clear lets the tool say "sealed to another key" rather than
"corrupt"; the signed manifest names it too, so a bundle sealed again to another
key by someone who opened it is told apart.

``BundleWriter`` streams members to a file (the logs never sit whole in memory);
``read_bundle`` checks a bundle's bytes and gives its sections. Nothing here reads
a clock; ``BundleError`` carries a one-line reason.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import zipfile
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import IO, Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from protocol.errors import ProtocolError, RemoteProtocolError
from protocol.sync import certificate as sync_cert

FORMAT = 1
LABEL = b"haven/debug-bundle/v1\x00"
SEAL_INFO = b"haven/debug-bundle/v1"
SEALED_MAGIC = b"HAVEN-SEALED-BUNDLE/1\n"
MANIFEST, LOGS, CERT, INDEX, SIGNATURE = ("manifest.json", "logs.jsonl", "kiosk.cert",
                                          "index.json", "index.sig")
#: The JSON sections besides the manifest, in the order they are written.
SECTIONS = ("status.json", "audit.json", "link.json", "metrics.json", "crashes.json",
            "redaction.json")
MEMBERS = frozenset({MANIFEST, LOGS, CERT, *SECTIONS})
#: What a reader accepts: a bundle is a few MiB; a ZIP bomb stops here.
MAX_MEMBER = 64 * 1024 * 1024
MAX_FILE = 64 * 1024 * 1024
#: What a damaged ZIP raises as it is read (an unknown method, a member marked encrypted...).
_DAMAGED = (zipfile.BadZipFile, zlib.error, OSError, ValueError, EOFError,
            NotImplementedError, RuntimeError)


class BundleError(RemoteProtocolError):
    code = "bad-bundle"


def dumps(value: Any) -> bytes:
    """A section's bytes: JSON, keys sorted, compact (what the index hashes)."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"),
                      ensure_ascii=False).encode()


class BundleWriter:
    """Members into a ZIP on ``out`` (a binary file), each hashed as written."""

    def __init__(self, out: IO[bytes]) -> None:
        self._zip = zipfile.ZipFile(out, "w", compression=zipfile.ZIP_DEFLATED,
                                    compresslevel=6)
        self._index: dict[str, dict[str, Any]] = {}

    def add(self, name: str, data: bytes) -> None:
        with self.stream(name) as f:
            f.write(data)

    @contextmanager
    def stream(self, name: str) -> Iterator[IO[bytes]]:
        """A member written piece by piece (``write(bytes)``)."""
        if name not in MEMBERS or name in self._index:
            raise ValueError(f"bundle member {name!r} unknown or written twice")
        digest = _Hashing(self._zip.open(_info(name), "w"))
        try:
            yield digest  # type: ignore[misc]
        finally:
            digest.close()
        self._index[name] = {"sha256": digest.sha.hexdigest(), "size": digest.size}

    def finish(self, ed_key: Ed25519PrivateKey, certificate: bytes) -> None:
        """The certificate, the index and the signature; the ZIP closed."""
        self.add(CERT, certificate)
        index = dumps({"format": FORMAT, "members": self._index})
        self._zip.writestr(_info(INDEX), index)
        self._zip.writestr(_info(SIGNATURE), ed_key.sign(LABEL + index).hex())
        self._zip.close()

    def abandon(self) -> None:
        """A build that failed: the ZIP closed now, while ``out`` is open (else its
        finaliser writes to a closed file), what it holds left to the caller to drop."""
        with contextlib.suppress(Exception):
            self._zip.close()


def _info(name: str) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(name, (2026, 1, 1, 0, 0, 0))
    info.compress_type = zipfile.ZIP_DEFLATED
    return info


class _Hashing:
    """Hashes what is written and hands it on in pieces of ``PIECE`` (a log line at a
    time would cost the compressor a call each)."""

    PIECE = 64 * 1024

    def __init__(self, inner: IO[bytes]) -> None:
        self.inner, self.sha, self.size = inner, hashlib.sha256(), 0
        self._held = bytearray()

    def write(self, data: bytes) -> int:
        self._held += data
        if len(self._held) >= self.PIECE:
            self._flush()
        return len(data)

    def _flush(self) -> None:
        self.sha.update(self._held)
        self.size += len(self._held)
        self.inner.write(self._held)
        self._held.clear()

    def close(self) -> None:
        self._flush()
        self.inner.close()


# Sealing -----------------------------------------------------------------------------

def seal(plain: bytes, recipient: bytes) -> bytes:
    return SEALED_MAGIC + recipient + sync_cert.seal(plain, recipient, SEAL_INFO)


def is_sealed(data: bytes) -> bool:
    return data.startswith(SEALED_MAGIC)


def sealed_to(data: bytes) -> bytes:
    """The X25519 public key a sealed bundle names as its recipient."""
    start = len(SEALED_MAGIC)
    if len(data) < start + 32 + 48:
        raise BundleError("a sealed bundle cut short (truncated)", "truncated")
    return data[start:start + 32]


def unseal(data: bytes, key: X25519PrivateKey) -> bytes:
    recipient = sealed_to(data)
    mine = key.public_key().public_bytes_raw()
    if recipient != mine:
        raise BundleError(f"sealed to another key ({fingerprint(recipient)}), not "
                          f"{fingerprint(mine)}", "other-key")
    try:
        return sync_cert.open_sealed(data[len(SEALED_MAGIC) + 32:], key, SEAL_INFO)
    except ProtocolError:
        raise BundleError("the sealed bundle does not open: corrupt or tampered",
                          "bad-seal") from None


def fingerprint(public: bytes) -> str:
    return hashlib.sha256(public).hexdigest()[:16]


# Reading -----------------------------------------------------------------------------

@dataclass(frozen=True)
class Bundle:
    certificate: sync_cert.Certificate
    members: dict[str, bytes]

    @property
    def manifest(self) -> dict[str, Any]:
        value = self.section(MANIFEST)
        if not isinstance(value, dict):
            raise ValueError("the manifest is not a JSON object")
        return dict(value)

    def section(self, name: str) -> Any:
        return json.loads(self.members[name])

    def log_entries(self) -> Iterator[dict[str, Any]]:
        for line in self.members.get(LOGS, b"").splitlines():
            if line.strip():
                yield json.loads(line)


def read_bundle(data: bytes, hub_ed25519: bytes | None = None,
                kiosk_ed25519: bytes | None = None, nonce: str | None = None,
                opened_with: bytes | None = None) -> Bundle:
    """Check a plain bundle's bytes (see the module docstring); ``BundleError`` says why
    it is refused. ``hub_ed25519``: the certificate must be this hub's; ``kiosk_ed25519``:
    the kiosk's key must be this one; ``nonce``: made for this request; ``opened_with``:
    the X25519 public key it was sealed to (the manifest must name it)."""
    if len(data) > MAX_FILE:
        raise BundleError(f"larger than a bundle can be ({len(data)} bytes)", "too-large")
    try:
        zf = zipfile.ZipFile(io.BytesIO(data))
        names = [i.filename for i in zf.infolist()]
    except _DAMAGED:
        raise BundleError("not a debug bundle (corrupt or truncated)", "corrupt") from None
    if len(names) != len(set(names)):
        raise BundleError("a member appears twice (tampered)", "tampered")
    index = _member(zf, INDEX)
    try:
        signature = bytes.fromhex(_member(zf, SIGNATURE).decode())
        listed = json.loads(index)
        members = dict(listed["members"])
        if listed.get("format") != FORMAT:
            raise BundleError(f"format {listed.get('format')!r}: not one this tool reads",
                              "format")
    except (ValueError, TypeError, KeyError, AttributeError, RecursionError):
        raise BundleError("its index is not readable (corrupt)", "corrupt") from None
    extra = set(names) - set(members) - {INDEX, SIGNATURE}
    if extra or not set(members) <= MEMBERS or not {MANIFEST, CERT} <= set(members):
        raise BundleError("its members are not the signed index's (tampered): "
                          + ", ".join(sorted(extra ^ (set(members) - MEMBERS))), "tampered")
    out: dict[str, bytes] = {}
    for name, meta in members.items():
        body = _member(zf, name)
        if not isinstance(meta, dict) or hashlib.sha256(body).hexdigest() != meta.get("sha256"):
            raise BundleError(f"{name} does not match its signed hash (tampered or corrupt)",
                              "tampered")
        out[name] = body
    try:
        cert = sync_cert.read_certificate(out[CERT])
    except ProtocolError as exc:
        raise BundleError(f"its kiosk certificate is not readable: {exc}", "corrupt") from None
    try:
        Ed25519PublicKey.from_public_bytes(cert.ed25519).verify(signature, LABEL + index)
    except (InvalidSignature, ValueError):
        raise BundleError(f"bad signature: not signed by kiosk {cert.device_id}, whose "
                          "certificate it carries (forged)", "forged") from None
    if hub_ed25519 is not None and cert.hub_ed25519 != hub_ed25519:
        raise BundleError(f"made by kiosk {cert.device_id} of another hub (hub key "
                          f"{fingerprint(cert.hub_ed25519)}, not {fingerprint(hub_ed25519)})",
                          "other-hub")
    if hub_ed25519 is not None:
        try:
            sync_cert.read_certificate(out[CERT], hub_ed25519)
        except ProtocolError:
            raise BundleError(f"kiosk {cert.device_id}'s certificate is not signed by this "
                              "hub (forged)", "forged") from None
    if kiosk_ed25519 is not None and cert.ed25519 != kiosk_ed25519:
        raise BundleError(f"not signed by the kiosk of the certificate given (it names "
                          f"kiosk {cert.device_id} with another key)", "other-kiosk")
    bundle = Bundle(cert, out)
    try:
        manifest = bundle.manifest
    except (ValueError, RecursionError):  # nested past the parser's depth: not a kiosk's
        raise BundleError("its manifest is not a JSON object (corrupt)", "corrupt") from None
    if manifest.get("kiosk") != cert.device_id:
        raise BundleError("its manifest names another kiosk than its certificate (forged)",
                          "forged")
    if nonce is not None and manifest.get("nonce") != nonce:
        raise BundleError("replayed: made for another request (its nonce is not the one "
                          "asked for)", "replayed")
    named = manifest.get("sealed_to")
    if opened_with is not None and named != opened_with.hex():
        raise BundleError("sealed again to another key than the kiosk sealed it to "
                          "(replayed)", "replayed")
    return bundle


def _member(zf: zipfile.ZipFile, name: str) -> bytes:
    try:
        info = zf.getinfo(name)
    except KeyError:
        raise BundleError(f"{name} is missing (truncated or tampered)", "tampered") from None
    if info.file_size > MAX_MEMBER:
        raise BundleError(f"{name} is larger than a bundle member can be", "too-large")
    try:
        with zf.open(info) as f:
            body = f.read(MAX_MEMBER + 1)
    except _DAMAGED:
        raise BundleError(f"{name} is corrupt (a bad checksum or cut short)",
                          "corrupt") from None
    if len(body) > MAX_MEMBER:
        raise BundleError(f"{name} is larger than a bundle member can be", "too-large")
    return body


def open_any(data: bytes, key: X25519PrivateKey | None, **checks: Any) -> Bundle:
    """``read_bundle`` of a plain or sealed bundle (sealed: opened with ``key``)."""
    if is_sealed(data):
        if key is None:
            raise BundleError(f"sealed to key {fingerprint(sealed_to(data))}: give the key "
                              "it was sealed to (--key FILE, or --hub DIR for the hub's)",
                              "sealed")
        plain = unseal(data, key)
        return read_bundle(plain, opened_with=key.public_key().public_bytes_raw(), **checks)
    return read_bundle(data, **checks)
