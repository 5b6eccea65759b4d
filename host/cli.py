"""``haven``: the hub and the technician's tool.

A thin shell: each command parses its arguments, calls one library function
(``host.send.send_files``, ``host.receive.receive_files``,
``protocol.driver.secret_files.new_key_file``)
and turns a ``HavenError`` into a one-line message and its exit code:
0 done, 1 transfer failed, 2 bad arguments (missing file, bad port, bad key),
3 the peer was silent for ``--timeout``, 4 the peer's key was refused.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict
from pathlib import Path

from host.batch import LinkOptions
from host.errors import HavenError, UsageError
from host.progress import Progress
from protocol.driver.command_line import command_parser, run_command
from protocol.driver.errors import DriverError, SecretFileError
from protocol.driver.secret_files import load_key_file, new_key_file, parse_public_key


def _link_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("port", metavar="PORT",
                   help="serial port or pyserial URL: /dev/ttyUSB0, /dev/pts/3, "
                        "socket://host:port, rfc2217://host:port")
    p.add_argument("--baud", type=int, help="line speed; the session paces itself to it (8N1)")
    p.add_argument("--tcp", action="store_true",
                   help="the link is TCP end to end (no retransmission timers); both sides")
    p.add_argument("--key", type=Path, metavar="FILE",
                   help="our X25519 private key (haven keygen): authenticated session")
    p.add_argument("--peer-key", metavar="HEX|FILE",
                   help="the peer's public key; refuse any other (needs --key)")
    p.add_argument("--timeout", type=float, default=120.0, metavar="S",
                   help="give up after S seconds without an authenticated frame (default 120)")
    p.add_argument("--json", action="store_true", help="print a JSON summary on stdout")


def build_parser() -> argparse.ArgumentParser:
    parser, sub = command_parser("haven", "Haven Kiosk hub and technician tool.")
    send = sub.add_parser("send", help="send files over a serial port or URL",
                          description="Send FILEs to a `haven receive` on the other end of "
                          "PORT. Exits 0 once the receiver has confirmed every file's hash.")
    _link_arguments(send)
    send.add_argument("files", nargs="+", type=Path, metavar="FILE", help="a file to send")
    recv = sub.add_parser("receive", help="receive files into a directory",
                          description="Receive the files of one `haven send` session into "
                          "DIR. Rerun after an interruption: only missing chunks cross.")
    _link_arguments(recv)
    recv.add_argument("directory", type=Path, metavar="DIR",
                      help="where the files go (made if missing)")
    keygen = sub.add_parser("keygen", help="create a key file; prints the public key",
                            description="Write a new X25519 private key to FILE (owner-only) "
                            "and its public key, in hex, to FILE.pub and stdout.")
    keygen.add_argument("file", type=Path, metavar="FILE",
                        help="the private key file to create (never overwritten)")
    from host.bundle import cli as bundle_cli
    from host.hub.commands import add_parsers
    from host.tech import fridge as tech_fridge
    from host.tech import logs as tech_logs
    from host.tech import provision
    from host.tech import wipe as tech_wipe
    from host.tech.cli import add_parsers as add_tech_parsers

    add_parsers(sub)
    provision.register()  # haven tech provision joins the technician's commands
    tech_wipe.register()  # and haven tech wipe
    tech_logs.register()  # and haven tech logs
    bundle_cli.register()  # and haven tech bundle
    tech_fridge.register()  # and haven tech fridge
    add_tech_parsers(sub)
    bundle_cli.add_parsers(sub)  # haven bundle verify, haven report
    return parser


def _options(args: argparse.Namespace) -> LinkOptions:
    if args.peer_key and not args.key:
        raise UsageError("--peer-key needs --key (an anonymous side cannot check a key)")
    if args.baud is not None and args.baud <= 0:
        raise UsageError("--baud must be positive")
    if args.timeout <= 0:
        raise UsageError("--timeout must be positive")
    try:
        key = load_key_file(args.key) if args.key else None
    except SecretFileError as exc:  # missing, too open, not a key: the message says which
        raise UsageError(str(exc)) from None
    except OSError as exc:
        raise UsageError(f"cannot read key {args.key}: {exc.strerror}") from None
    try:
        peer_key = parse_public_key(args.peer_key) if args.peer_key else None
    except SecretFileError as exc:
        raise UsageError(f"--peer-key {exc}") from None
    return LinkOptions(baud=args.baud, tcp=args.tcp, timeout=args.timeout, key=key,
                       peer_key=peer_key)


def _run(args: argparse.Namespace) -> int:
    if args.command in ("hub", "review"):
        from host.hub.commands import run

        return run(args)
    if args.command in ("bundle", "report"):
        from host.bundle.cli import run as run_bundle

        return run_bundle(args)
    if args.command == "tech":
        from host.tech.cli import run as run_tech

        return run_tech(args)
    if args.command == "keygen":
        try:
            print(new_key_file(args.file))
        except FileExistsError:
            raise UsageError(f"{args.file} exists; not overwriting a key") from None
        except OSError as exc:
            raise UsageError(f"cannot create {args.file}: {exc.strerror}") from None
        return 0
    options = _options(args)
    progress = Progress()
    try:
        if args.command == "send":
            from host.send import send_files

            summary = send_files(args.port, args.files, options, progress)
        else:
            from host.receive import receive_files

            summary = receive_files(args.port, args.directory, options, progress)
    finally:
        progress.end()
    if args.json:
        print(json.dumps(asdict(summary)))
    return 0


def _failure(exc: Exception) -> tuple[str, int] | None:
    if isinstance(exc, HavenError):
        return str(exc), exc.exit_code
    if isinstance(exc, DriverError):  # a database from a newer release, say
        return str(exc), 1
    if type(exc).__module__.startswith("psycopg"):  # the hub's PostgreSQL went away
        return f"the hub's database: {(str(exc).strip().splitlines() or ['failed'])[0]}", 1
    return None


def main(argv: list[str] | None = None) -> int:
    return run_command(build_parser(), argv, _run, _failure)


if __name__ == "__main__":
    sys.exit(main())
