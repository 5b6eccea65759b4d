"""``haven tech bundle``, ``haven bundle verify`` and ``haven report``.

``haven tech bundle PORT --credential FILE --out FILE [--seal-to KEY]`` asks the
kiosk for a debug bundle with a fresh nonce, receives it (resumable, like
``pull``), checks it (a plain one against the credential's hub and the nonce; a
sealed one for the key it names) and only then writes ``--out``. ``KEY`` is
``hub`` (the kiosk's hub, from its certificate), 64 hex digits or a ``.pub`` file
of ``haven keygen``. ``haven bundle verify`` and ``haven report`` take the same
anchors (``host.bundle.verify``).
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from host import tech_log
from host.bundle import verify
from host.errors import HavenError, UsageError
from host.tech.cli import SUBCOMMANDS, session
from protocol import debug_bundle as fmt
from protocol.driver.errors import SecretFileError
from protocol.driver.secret_files import parse_public_key

#: What laying out a section of the wrong shape raises (a string where a number goes, a
#: list where a map, a time past any calendar, JSON nested past the parser's depth).
_UNREADABLE = (ValueError, TypeError, AttributeError, KeyError, IndexError, OverflowError,
               RecursionError)
#: Beyond the tool's --timeout: a month of logs and metrics takes a Pi some seconds.
BUILD_WAIT = 60.0


def add_parsers(sub: Any) -> None:
    bundle = sub.add_parser("bundle", help="check a kiosk's debug bundle",
                            description="Check a debug bundle made by haven tech bundle.")
    cmds = bundle.add_subparsers(dest="bundle_command", required=True, metavar="COMMAND")
    p = cmds.add_parser("verify", help="check a bundle's signature and contents",
                        description="Check that FILE is a debug bundle signed by a kiosk of "
                        "the hub (--hub, --credential) or by the kiosk of --kiosk-cert, whole "
                        "and untouched. Exits 0 if so, 1 with one line saying why not.")
    p.add_argument("file", type=Path, metavar="FILE", help="the bundle")
    verify.add_arguments(p)
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    r = sub.add_parser("report", help="a debug bundle as a page people can read",
                       description="Write a debug bundle as one self-contained HTML page "
                       "(--html: plots inline, no network) or print its data as JSON.")
    r.add_argument("bundle", type=Path, metavar="BUNDLE", help="the bundle")
    out = r.add_mutually_exclusive_group(required=True)
    out.add_argument("--html", type=Path, metavar="OUT", help="the page to write")
    out.add_argument("--json", action="store_true", help="print the report's data as JSON")
    verify.add_arguments(r)


def run(args: argparse.Namespace) -> int:
    if args.command == "bundle":
        a = verify.anchors(args, required=True)
        bundle = verify.read_file(args.file, a)
        result = verify.summary(args.file, bundle, a)
        if args.json:
            print(json.dumps(result, sort_keys=True))
        else:
            logs = result["logs"] if isinstance(result["logs"], dict) else {}
            print(f"{args.file}: good: kiosk {result['kiosk']} ({result['site']}), signed, "
                  f"checked against {a.against}; log entries {logs.get('first')}–"
                  f"{logs.get('last')}")
        return 0
    from host.bundle.report import render_html, report_data

    a = verify.anchors(args, required=False)
    bundle = verify.read_file(args.bundle, a)
    try:
        data = report_data(bundle, a.against)
        page = json.dumps(data, sort_keys=True) if args.json else render_html(data)
    except _UNREADABLE as exc:
        # Signed is not sound: a kiosk's bug or a hostile kiosk can sign any values.
        raise verify.BundleRefused(
            f"{args.bundle}: signed by kiosk {bundle.certificate.device_id}, but it holds "
            f"values no kiosk writes ({type(exc).__name__}): no report made") from None
    if args.json:
        print(page)
        return 0
    _write(args.html, page.encode())
    print(f"{args.html}: report of kiosk {data['kiosk']}: " + " ".join(data["summary"][:1]))
    return 0


def _write(path: Path, data: bytes) -> None:
    """``data`` into ``path`` whole (a temporary file beside it, renamed)."""
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent or Path("."), prefix=f".{path.name}.")
    except OSError as exc:
        raise UsageError(f"cannot write {path}: {exc.strerror}") from None
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        os.unlink(tmp)
        raise UsageError(f"cannot write {path}: {exc.strerror}") from None


# haven tech bundle ---------------------------------------------------------------------

def add_tech_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", type=Path, required=True, metavar="FILE",
                   help="where the bundle goes")
    p.add_argument("--seal-to", metavar="KEY",
                   help="seal it (HPKE) to KEY: 'hub', 64 hex digits or a .pub file")


def run_tech(args: argparse.Namespace, client_for: Callable[[argparse.Namespace], Any]) -> int:
    seal: bytes | str | None = None
    if args.seal_to == "hub":
        seal = "hub"
    elif args.seal_to is not None:
        try:
            seal = parse_public_key(args.seal_to)
        except SecretFileError as exc:
            raise UsageError(f"--seal-to {exc}") from None
    if args.out.is_dir():
        raise UsageError(f"--out {args.out} is a directory: name the bundle's file")
    if not args.out.parent.is_dir():
        raise UsageError(f"--out {args.out}: no directory {args.out.parent}")
    nonce = secrets.token_hex(16)
    parts = args.out.parent / f".{args.out.name}.parts"
    with tech_log.logged("bundle", port=args.port) as entry:
        with session(args, client_for, entry) as client:
            client.timeout = args.timeout + BUILD_WAIT  # the kiosk builds before it sends
            r = client.fetch("bundle", {"nonce": nonce, "seal_to": seal}, parts, args.progress)
            hub = client.cred.hub_ed25519
        got = Path(r["path"])
        data = got.read_bytes()
        _check(data, hub, nonce, seal)
        os.replace(got, args.out)
        shutil.rmtree(parts, ignore_errors=True)  # the transfer's own state, done with
        entry.detail = {"size": len(data), "sealed": seal is not None}
    if args.json:
        print(json.dumps({**{k: v for k, v in r.items() if k != "path"},
                          "path": str(args.out), "nonce": nonce}, sort_keys=True))
    else:
        print(f"{args.out}: debug bundle of kiosk {r.get('kiosk')}, {len(data)} bytes, "
              + ("sealed (only its key opens it)" if seal is not None else
                 "signed and checked"))
    return 0


def _check(data: bytes, hub: bytes, nonce: str, seal: bytes | str | None) -> None:
    """A plain bundle must be our hub's kiosk's and answer our nonce; a sealed one must be
    sealed to the key asked for (the session with the kiosk was authenticated)."""
    try:
        if fmt.is_sealed(data):
            if seal is None or (isinstance(seal, bytes) and fmt.sealed_to(data) != seal):
                raise fmt.BundleError("sealed to another key than asked for", "other-key")
        else:
            if seal is not None:
                raise fmt.BundleError("not sealed, though sealing was asked for", "unsealed")
            fmt.read_bundle(data, hub_ed25519=hub, nonce=nonce)
    except fmt.BundleError as exc:
        raise HavenError(f"the kiosk's bundle was refused: {exc}") from None


def register() -> None:

    SUBCOMMANDS["bundle"] = (add_tech_arguments, run_tech,
                             "make a debug bundle of the kiosk and fetch it")
