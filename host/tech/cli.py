"""``haven tech``: the technician's commands on a kiosk's console port.

Each command is ``haven tech CMD PORT --credential FILE [--json] ...``: it opens an
authenticated Haven session (``host.tech.client.TechClient``), runs one command,
prints a short summary (or the result as JSON with ``--json``), shows progress on a
terminal, and writes one line to the technician's log (``host.tech_log``). A mistake
(a wrong port, no kiosk answering, a credential for another site or expired) is one
line on stderr with the exit codes of ``host.errors``.

Another command joins with ``SUBCOMMANDS[name] = (add_arguments, run)``: ``add_arguments
(parser)`` adds its own arguments after the common ones, ``run(args, client_for)``
returns the exit code; ``client_for(args)`` gives a connected ``TechClient``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from host import tech_log
from host.errors import UsageError
from host.progress import Progress
from host.tech.client import DEFAULT_TIMEOUT, TechClient
from protocol.driver.command_line import positive_number
from protocol.errors import ProtocolError
from protocol.sync import credential

Runner = Callable[[argparse.Namespace, Callable[[argparse.Namespace], TechClient]], int]
SUBCOMMANDS: dict[str, tuple[Callable[[argparse.ArgumentParser], None], Runner, str]] = {}


def load_credential(path: Path) -> credential.CredentialFile:
    try:
        return credential.load_file(path.read_bytes())
    except FileNotFoundError:
        raise UsageError(f"{path}: no such credential file") from None
    except OSError as exc:
        raise UsageError(f"cannot read {path}: {exc.strerror}") from None
    except ProtocolError as exc:
        raise UsageError(f"{path}: {exc}") from None


def client_for(args: argparse.Namespace) -> TechClient:
    """A ``TechClient`` for the command's port and credential, connected."""
    cred = load_credential(args.credential)
    progress: Progress = args.progress
    client = TechClient(args.port, cred, baud=args.baud, timeout=args.timeout,
                        on_note=progress.note)
    client.connect()
    return client


MAX_BAUD = 4_000_000  #: the fastest rate Linux's serial drivers name


def _baud(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, not {text!r}") from None
    if not 0 < value <= MAX_BAUD:
        raise argparse.ArgumentTypeError(f"a line speed is 1 to {MAX_BAUD}, not {text}")
    return value


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("port", metavar="PORT",
                   help="the kiosk's console: /dev/ttyUSB0, /dev/ttyACM0, a pyserial URL")
    p.add_argument("--credential", type=Path, required=True, metavar="FILE",
                   help="the credential from haven hub technician issue")
    p.add_argument("--baud", type=_baud, help="line speed; the session paces itself to it")
    p.add_argument("--timeout", type=positive_number, default=DEFAULT_TIMEOUT, metavar="S",
                   help=f"give up after S seconds without an answer (default "
                        f"{DEFAULT_TIMEOUT:g})")
    p.add_argument("--json", action="store_true", help="print the result as JSON")


def add_parsers(sub: Any) -> None:
    tech = sub.add_parser("tech", help="a technician's commands on a kiosk's console",
                          description="Talk to a kiosk's console over an authenticated "
                          "Haven session, with a credential from haven hub technician issue.")
    cmds = tech.add_subparsers(dest="tech_command", required=True, metavar="COMMAND")
    p = cmds.add_parser("status", help="version, uptime, disk, memory, sync, outbox, errors",
                        description="Show the kiosk's version, uptime, disk, RSS, temperature, "
                        "sync state and last sync, outbox by lane, link and last errors.")
    _common(p)
    p = cmds.add_parser("config", help="read or change one configuration key",
                        description="get KEY, or set KEY VALUE (checked by the kiosk; a key "
                        "that needs it restarts the runtime, gracefully)")
    _common(p)
    p.add_argument("op", choices=("get", "set"), help="get or set")
    p.add_argument("key", metavar="KEY", help="a configuration key (haven-kiosk run --help)")
    p.add_argument("value", nargs="?", metavar="VALUE",
                   help="the new value (set); a list: comma-separated")
    p = cmds.add_parser("time", help="the kiosk's clock and trusted time",
                        description="Show the kiosk's clock and trusted time; with --set, set "
                        "its clock from this computer's when it has no better source.")
    _common(p)
    p.add_argument("--set", action="store_true", help="set the kiosk's clock")
    p = cmds.add_parser("restart", help="restart the kiosk's runtime gracefully",
                        description="Stop the kiosk's runtime gracefully; its service manager "
                        "starts it again.")
    _common(p)
    p = cmds.add_parser("hw", help="test the LED, the buzzer and the service button",
                        description="Show each LED pattern, beep once, then wait for the "
                        "service button to be pressed. Exits 1 if it is not pressed in time.")
    _common(p)
    p.add_argument("test", choices=("test",), help="test (the only hardware command)")
    p.add_argument("--wait", type=float, default=10.0, metavar="S",
                   help="how long to wait for a button press (default 10)")
    p.add_argument("--step", type=float, default=1.0, metavar="S",
                   help="how long each LED pattern shows (default 1)")
    p = cmds.add_parser("pull", help="fetch a file from the kiosk's export directory",
                        description="Fetch NAME from the kiosk's export directory into "
                        "--out. Run it again after an interruption: only what is missing "
                        "crosses.")
    _common(p)
    p.add_argument("name", metavar="NAME", help="a file's name in the export directory")
    p.add_argument("--out", type=Path, default=Path("."), metavar="DIR",
                   help="where the file goes (default: here)")
    for name, (add, _, text) in SUBCOMMANDS.items():
        p = cmds.add_parser(name, help=text, description=text[:1].upper() + text[1:] + ".")
        _common(p)
        add(p)


def _print(args: argparse.Namespace, result: dict[str, Any], line: str) -> None:
    if args.json:
        print(json.dumps(result, sort_keys=True, default=_json_default))
    else:
        print(line)


def _json_default(value: Any) -> Any:
    return value.hex() if isinstance(value, bytes) else str(value)


def _status_lines(r: dict[str, Any]) -> str:
    sync = r.get("sync", {})
    disk = r.get("disk", {})
    lines = [f"version {r.get('version')}, up {r.get('uptime_s', 0):.0f} s, "
             f"RSS {r.get('rss_kib', 0) / 1024:.1f} MiB"
             + (f", {r['temperature_c']:.1f} °C" if "temperature_c" in r else ""),
             f"disk: {disk.get('free_kib', 0) / 1024:.0f} MiB free of "
             f"{disk.get('total_kib', 0) / 1024:.0f} MiB",
             f"sync: {sync.get('state')}, last {sync.get('last_sync') or 'never'}, "
             f"{sync.get('unsent', 0)} unsent"]
    outbox = r.get("outbox")
    if outbox:
        lines.append("outbox: " + ", ".join(f"lane {k}: {v.get('entries', v)}"
                                            for k, v in outbox.items()))
    link = r.get("link")
    if link:
        lines.append("link: " + ", ".join(f"{k} {v}" for k, v in link.items()))
    for e in r.get("last_errors", []):
        lines.append(f"  {e.get('at')} {e.get('msg')}")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    """``haven tech CMD``: the command's exit code (errors are raised, one line each)."""
    name = args.tech_command
    action = {"config": f"config.{getattr(args, 'op', '')}", "hw": "hw.test",
              "time": "time.set" if getattr(args, "set", False) else "time"}.get(name, name)
    args.progress = Progress()
    if name in SUBCOMMANDS:
        return SUBCOMMANDS[name][1](args, client_for)
    with tech_log.logged(action, port=args.port) as entry:
        if name == "config" and args.op == "set" and args.value is None:
            raise UsageError("config set KEY VALUE: give a value")
        with session(args, client_for, entry) as client:
            return _run(args, client, entry)


@contextlib.contextmanager
def session(args: argparse.Namespace, client_for: Callable[[argparse.Namespace], TechClient],
            entry: tech_log.Action) -> Iterator[TechClient]:
    """A connected client for one command, the kiosk and the credential's serial noted in
    its technician's log ``entry``; the progress line ends with it."""
    try:
        with client_for(args) as client:
            w = client.welcome
            if w is not None:
                entry.kiosk, entry.serial = w.device, w.serial
            yield client
    finally:
        args.progress.end()


def _run(args: argparse.Namespace, client: TechClient, entry: tech_log.Action) -> int:
    name = args.tech_command
    if name == "status":
        r = client.call("status")
        _print(args, r, _status_lines(r))
    elif name == "config":
        call: dict[str, Any] = {"op": args.op, "key": args.key}
        if args.op == "set":
            call["value"] = args.value
        entry.detail = {"key": args.key}
        r = client.call("config", call)
        line = (f"{args.key} = {r.get('value')!r} ({r.get('applied')})" if args.op == "set"
                else f"{args.key} = {r.get('running')!r} (file: {r.get('file')!r}; "
                     f"default {r.get('default')!r}"
                     + ("; a change restarts the runtime)" if r.get("restart") else ")"))
        _print(args, r, line)
    elif name == "time":
        r = client.call("time", {"set": int(time.time() * 1000)} if args.set else {})
        trusted = r.get("trusted")
        held = f"{trusted['describe']} {_utc(trusted['ms'])}" if trusted else "none"
        line = (f"kiosk clock {_utc(r['kiosk_ms'])}, this computer "
                f"{_utc(time.time() * 1000)}; trusted: {held}")
        if "set_ms" in r:
            line += f"\nset to {_utc(r['set_ms'])} (from the {r['source']} time)"
        _print(args, r, line)
    elif name == "restart":
        r = client.call("restart")
        _print(args, r, "the kiosk's runtime is restarting")
    elif name == "hw":
        r = client.call("hw", {"timeout": args.wait, "step": args.step},
                        timeout=args.wait + 20 + args.timeout)
        _print(args, r, f"LED: {', '.join(r.get('led', []))}; buzzer beeped; button "
                        + ("pressed" if r.get("button") else "NOT pressed in time"))
        if not r.get("button"):
            entry.result = "button-not-pressed"
            return 1
    elif name == "pull":
        r = client.pull(args.name, args.out, args.progress)
        entry.detail = {"file": args.name, "size": r.get("size")}
        _print(args, r, f"{r['path']}: {r['size']} bytes, sha256 {r['sha256'][:16]}…")
    return 0


def _utc(ms: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(ms / 1000))
