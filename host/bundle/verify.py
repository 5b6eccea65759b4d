"""``haven bundle verify``: is this debug bundle what a kiosk of our hub made?

The anchors come from the command line: ``--hub DIR`` (the hub's own keys: its
Ed25519 key checks the kiosk's certificate, its X25519 key opens a bundle sealed
to the hub, and its list of revoked kiosks refuses theirs), ``--credential FILE``
(a technician's credential names its hub's key: what a field worker holds) or
``--kiosk-cert FILE`` (that kiosk's certificate: the bundle must be signed by its
key). ``--key FILE`` opens a bundle sealed to a field team's key (``haven keygen``).
Every refusal is one line (``UsageError``, exit 2, for what the command line
gave; ``BundleRefused``, exit 1, for the bundle).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from host.errors import HavenError, UsageError
from protocol import debug_bundle as fmt
from protocol.driver.errors import SecretFileError
from protocol.driver.secret_files import load_key_file
from protocol.errors import ProtocolError
from protocol.sync import certificate as sync_cert
from protocol.sync import credential

T = TypeVar("T")


class BundleRefused(HavenError):
    exit_code = 1


@dataclass
class Anchors:
    hub_ed25519: bytes | None = None
    kiosk_ed25519: bytes | None = None
    key: X25519PrivateKey | None = None
    revoked: frozenset[str] = frozenset()
    nonce: str | None = None
    against: str = "its own certificate only"  #: what the signature was checked against


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--hub", type=Path, metavar="DIR",
                   help="the hub's directory: its key checks the kiosk, opens a bundle "
                        "sealed to it, and refuses a revoked kiosk's")
    p.add_argument("--credential", type=Path, metavar="FILE",
                   help="a technician's credential: its hub's key checks the kiosk")
    p.add_argument("--kiosk-cert", type=Path, metavar="FILE",
                   help="the kiosk's certificate: the bundle must be signed by its key")
    p.add_argument("--key", type=Path, metavar="FILE",
                   help="the private key (haven keygen) a sealed bundle was sealed to")
    p.add_argument("--nonce", metavar="HEX", help="the request the bundle must answer")


def anchors(args: argparse.Namespace, *, required: bool) -> Anchors:
    """The checks the command line asks for; ``UsageError`` for one that is unusable."""
    out = Anchors(nonce=args.nonce)
    if args.key is not None:
        try:
            out.key = load_key_file(args.key)
        except SecretFileError as exc:
            raise UsageError(str(exc)) from None
        except OSError as exc:
            raise UsageError(f"cannot read key {args.key}: {exc.strerror}") from None
    if args.credential is not None:
        cred = _read(args.credential, lambda b: credential.load_file(b), "")
        out.hub_ed25519 = cred.hub_ed25519
        out.against = "the hub key of the credential"
    if args.kiosk_cert is not None:
        cert = _read(args.kiosk_cert, sync_cert.read_certificate, "not a kiosk certificate: ")
        out.kiosk_ed25519 = cert.ed25519
        out.hub_ed25519 = out.hub_ed25519 or cert.hub_ed25519
        out.against = f"kiosk {cert.device_id}'s certificate"
    if args.hub is not None:
        _hub(args.hub, out)
    if required and out.hub_ed25519 is None:
        raise UsageError("give what to check the bundle against: --hub DIR, --credential "
                         "FILE or --kiosk-cert FILE")
    return out


def _read(path: Path, parse: Callable[[bytes], T], what: str) -> T:
    """``parse`` of the file's bytes; ``UsageError`` (one line) if it cannot be read."""
    try:
        return parse(path.read_bytes())
    except OSError as exc:
        raise UsageError(f"cannot read {path}: {exc.strerror}") from None
    except ProtocolError as exc:
        raise UsageError(f"{path}: {what}{exc}") from None


def _hub(directory: Path, out: Anchors) -> None:
    from host.hub.hub import Hub

    if not directory.is_dir():
        raise UsageError(f"{directory}: no such hub directory")
    try:
        with Hub(directory) as hub:
            out.hub_ed25519 = hub.ed_key.public_key().public_bytes_raw()
            out.key = out.key or hub.x_key
            out.revoked = frozenset(hub.store.revoked_devices())
    except HavenError:
        raise
    except Exception as exc:
        raise UsageError(f"{directory}: not a hub's directory ({exc})") from None
    out.against = "the hub's key"


def read_file(path: Path, a: Anchors) -> fmt.Bundle:
    """The bundle in ``path``, checked against ``a``; ``BundleRefused`` (one line) if not."""
    try:
        with path.open("rb") as f:
            data = f.read(fmt.MAX_FILE + 1)
    except FileNotFoundError:
        raise UsageError(f"{path}: no such file") from None
    except OSError as exc:
        raise UsageError(f"cannot read {path}: {exc.strerror}") from None
    try:
        bundle = fmt.open_any(data, a.key, hub_ed25519=a.hub_ed25519,
                              kiosk_ed25519=a.kiosk_ed25519, nonce=a.nonce)
    except fmt.BundleError as exc:
        raise BundleRefused(f"{path}: refused: {exc}") from None
    device = bundle.certificate.device_id
    if device in a.revoked:
        raise BundleRefused(f"{path}: refused: kiosk {device} is revoked on this hub")
    return bundle


def summary(path: Path, bundle: fmt.Bundle, a: Anchors) -> dict[str, Any]:
    m = bundle.manifest
    return {"file": str(path), "ok": True, "kiosk": m.get("kiosk"), "site": m.get("site"),
            "made_ms": m.get("made_ms"), "sealed": m.get("sealed_to") is not None,
            "checked_against": a.against, "logs": m.get("logs"),
            "members": sorted(bundle.members)}
