"""``haven-kiosk``: the kiosk runtime and its maintenance commands.

A thin shell, like sqlite-utils' cli.py: each command parses its arguments,
calls the library, prints what it returns, and turns a library error into one
clear line on stderr and an exit status: 1 for a refusal or a failure, 2 for a
usage error or a bad configuration (a flag, or a key of the TOML file). The
configuration's flags come from its one declaration in ``device.config``.
``dump`` writes the store's canonical JSON as is.
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from device import config
from device.fridges import command as fridge_command
from protocol.crdt import schema as crdt_schema
from protocol.driver.command_line import (
    TerseParser,
    command_parser,
    positive_number,
    run_command,
)
from protocol.errors import ProtocolError

STORAGE_WARNINGS = {
    "ok": "",
    "low": "\n  WARNING: under {low_mib:g} MiB: free space on this disk (the runtime has "
           "truncated its write-ahead logs)",
    "critical": "\n  CRITICAL: under {critical_mib:g} MiB: new check-ins are refused until "
                "space is freed",
}


class _CommandsHelp(argparse.HelpFormatter):
    """argparse measures commands one indent short: a long one (staff-pin) would wrap."""

    def add_argument(self, action: argparse.Action) -> None:
        super().add_argument(action)
        if isinstance(action, argparse._SubParsersAction):
            self._action_max_length += 2


def _data(p: argparse.ArgumentParser, required: bool = True) -> None:
    config.add_flags(p, ("data",), required=("data",) if required else ())


def _action_data(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", type=Path, metavar="DIR", default=argparse.SUPPRESS,
                   help="the kiosk's data directory (here or before the action)")


def build_parser() -> argparse.ArgumentParser:
    parser, sub = command_parser("haven-kiosk",
                                 "Haven Kiosk runtime: check-ins, local store and sync.",
                                 TerseParser)
    parser.formatter_class = _CommandsHelp

    p = sub.add_parser("init", help="create the store and the kiosk's keys",
                       description="Create the kiosk's store and keys (or update site/letter).")
    _data(p)
    p.add_argument("--site", required=True, help="the site's name")
    p.add_argument("--letter", help="the kiosk's queue letter, A to Z (default: the hub "
                   "gives the first free at the site when it enrols the kiosk)")
    p.add_argument("--fleet-key", type=Path, metavar="FILE",
                   help="the fleet key patient ids derive from (made locally if not given)")
    p.add_argument("--passphrase-file", type=Path, metavar="FILE",
                   help="with --key-provider passphrase: the passphrase staff unlock the "
                   "kiosk with, the first line of FILE (default: asked twice on the terminal)")
    p.add_argument("--config", type=Path, metavar="FILE",
                   help=f"the TOML configuration file key_provider and tpm_tcti come from "
                   f"(default {config.DEFAULT_PATH}, read if it exists); flags win")
    config.add_flags(p, ("key_provider", "tpm_tcti"))

    p = sub.add_parser("keys", help="rotate the store key (re-sealing in the background)",
                       description="rotate: a new random store key, kept beside the current "
                       "one (store.key.next, sealed to the TPM, or under the passphrase) "
                       "before anything is sealed under it; every sealed value is then "
                       "sealed again under it, a slice at a time, and the old key destroyed. "
                       "With haven-kiosk run serving DIR, the runtime does that in the "
                       "background while check-ins go on (haven-kiosk status shows how far); "
                       "without, this command does it and returns when done. A rotation "
                       "cut short (a power cut) resumes; a second one while one runs is "
                       "refused (exit 2), as are a wrong passphrase and a kiosk whose keys "
                       "are destroyed.")
    _data(p)
    p.add_argument("action", choices=("rotate",), help="rotate: a new store key")
    p.add_argument("--passphrase-file", type=Path, metavar="FILE",
                   help="a kiosk made with --key-provider passphrase: its passphrase, the "
                   "first line of FILE (default: asked on the terminal)")

    p = sub.add_parser("passphrase", help="change the passphrase staff unlock the kiosk with",
                       description="Change the passphrase of a kiosk made with --key-provider "
                       "passphrase: the store key is wrapped again under the new one (the "
                       "data is not touched). Each passphrase is the first line of its file, "
                       "or asked on the terminal; never a command-line argument.")
    _data(p)
    p.add_argument("action", choices=("change",), help="change: ask for the old passphrase "
                   "and the new one")
    p.add_argument("--passphrase-file", type=Path, metavar="FILE",
                   help="the current passphrase, the first line of FILE")
    p.add_argument("--new-passphrase-file", type=Path, metavar="FILE",
                   help="the new passphrase (8 to 256 characters), the first line of FILE")

    p = sub.add_parser("enroll", help="install the certificate the hub issued",
                       description="Install CERT (from haven hub enroll): the hub's keys, "
                       "the kiosk's letter and the fleet key.")
    _data(p)
    p.add_argument("cert", type=Path, metavar="CERT", help="the certificate file")
    p.add_argument("--passphrase-file", type=Path, metavar="FILE",
                   help="a kiosk made with --key-provider passphrase: its passphrase, the "
                   "first line of FILE (default: asked on the terminal)")

    p = sub.add_parser("sync", help="sync with the hub",
                       description="Push the outbox to the hub and pull its changes, over "
                       "the first hub URL that works (tcp://HOST:PORT, a serial device or a "
                       "pyserial URL). Runs until interrupted, or once with --once.")
    _data(p)
    config.add_flags(p, ("hub",), required=("hub",))
    p.add_argument("--once", action="store_true",
                   help="one round; exit 0 only when everything is acknowledged both ways")
    p.add_argument("--timeout", type=positive_number, default=120.0, metavar="S",
                   help="with --once, give up after S seconds (default 120)")
    p.add_argument("--json", action="store_true", help="print a JSON summary per round")
    config.add_flags(p, ("baud", "interval", "poll_interval", "link_interval", "keepalive"),
                     defaults=True)

    p = sub.add_parser("run", help="run the kiosk: check-in page, sync and hardware",
                       description="Serve the check-in page and sync with the hub in one "
                       "process until SIGTERM/SIGINT. Options come from the TOML config "
                       "(/etc/haven/kiosk.toml or --config); flags win.")
    p.add_argument("--config", type=Path, metavar="FILE",
                   help=f"the TOML configuration file (default {config.DEFAULT_PATH}, "
                   "read if it exists)")
    config.add_flags(p)

    p = sub.add_parser("checkin", help="record a check-in (what is typed is a claim on it)",
                       description="Check a patient in; prints the queue number after commit.")
    _data(p)
    p.add_argument("--passport", metavar="ID", help="passport number (omit if none)")
    p.add_argument("--code", metavar="XXXX-XXXX",
                   help="the short patient code a patient without documents was given")
    p.add_argument("--name", help="the name the patient gives (required without --passport "
                   "or --code, and the patient is given a code; with one, kept on the "
                   "check-in as a claim)")
    p.add_argument("--birth-year", type=int, metavar="Y", help="the patient's year of birth")
    p.add_argument("--reason", metavar="R", help="the reason for the visit")
    p.add_argument("--json", action="store_true", help="print one JSON object")

    p = sub.add_parser("put", help="create or update a record",
                       description="Create or update a record. FIELD=VALUE assigns (empty "
                       "clears), FIELD+=ELEM and FIELD-=ELEM change a set. Prints the id.")
    _data(p)
    p.add_argument("--type", required=True, choices=sorted(crdt_schema.TYPES_BY_NAME),
                   help="the record's type (haven-kiosk schema lists them)")
    p.add_argument("--id", metavar="UUID", help="the record to update (new if omitted)")
    p.add_argument("fields", nargs="*", metavar="FIELD=VALUE",
                   help="a field's new value (FIELD+=ELEM, FIELD-=ELEM for a set)")

    p = sub.add_parser("delete", help="delete a record", description="Delete a record.")
    _data(p)
    p.add_argument("id", metavar="ID", help="the record's id")

    p = sub.add_parser("resolve", help="resolve a held conflict",
                       description="Resolve a conflict by keeping one version or setting values.")
    _data(p)
    p.add_argument("conflict", metavar="CONFLICT_ID", help="the conflict (haven-kiosk status "
                   "lists them)")
    how = p.add_mutually_exclusive_group(required=True)
    how.add_argument("--keep", metavar="VERSION_ID", help="keep this version")
    how.add_argument("--set", nargs="+", metavar="FIELD=VALUE", help="set these values")

    p = sub.add_parser("attach", help="attach a document (a scan, a PDF) to a patient",
                       description="Store FILE on the kiosk (chunked, sealed at rest) and "
                       "write its document record; sync sends the record, then only the "
                       "chunks the hub lacks. Prints the record id.")
    _data(p)
    p.add_argument("--patient", required=True, metavar="PATIENT_ID",
                   help="the patient the document belongs to")
    p.add_argument("file", type=Path, metavar="FILE", help="the document to store")
    p.add_argument("--title", metavar="T", help="the document's title (default: FILE's name)")
    p.add_argument("--content-type", metavar="CT",
                   help="its media type (default: guessed from FILE's name)")
    p.add_argument("--json", action="store_true", help="print one JSON object")

    p = sub.add_parser("dump", help="print the decrypted state as canonical JSON",
                       description="Print every record as canonical JSON (sorted keys).")
    _data(p)

    p = sub.add_parser("status", help="outbox, conflicts, quarantine, last sync, disk space",
                       description="Show the outbox per lane, conflicts, quarantine, last sync "
                       "and the free space on the data's disk against the thresholds of the "
                       "TOML config (/etc/haven/kiosk.toml or --config).")
    _data(p)
    p.add_argument("--config", type=Path, metavar="FILE",
                   help=f"the TOML configuration file (default {config.DEFAULT_PATH}, "
                   "read if it exists)")
    p.add_argument("--json", action="store_true", help="print one JSON object")

    p = sub.add_parser("hw", help="press the simulated button, read the LED",
                       description="Drive the simulated hardware of the haven-kiosk run "
                       "serving DIR (hardware = simulated only): press the service "
                       "button, read the status LED's pattern, or print the state as JSON.")
    _data(p)
    action = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    press = action.add_parser("press", help="press the button (held longer than the "
                              "runtime's hold time, 3 s by default: sync now)",
                              description="Hold the simulated service button down for "
                              "--hold seconds; prints whether it was a long press and the LED.")
    press.add_argument("--hold", type=float, default=0.2, metavar="S",
                       help="seconds to hold it down (default 0.2, at most 30)")
    action.add_parser("led", help="print the LED's pattern: synced, pending, offline, error",
                      description="Print the simulated status LED's pattern: synced, "
                      "pending, offline or error.")
    action.add_parser("state", help="print the LED, the button and the hold time as JSON",
                      description="Print the LED's pattern, whether the button is pressed "
                      "and the runtime's hold time, as one JSON object.")

    p = sub.add_parser("staff-pin", help="set the staff screen's PIN",
                       description="Set the staff screen's PIN (6 to 12 digits). It is kept "
                       "as a scrypt hash in DIR/staff-pin, never in plaintext; a running "
                       "kiosk takes it at once. The PIN is asked twice on a terminal, or "
                       "read as one line from standard input.")
    _data(p, required=False)
    pin_action = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    ps = pin_action.add_parser("set", help="set the PIN (asked for, or one line on stdin)",
                               description="Set the staff PIN: asked twice on a terminal, "
                               "or read as one line from standard input.")
    ps.add_argument("--data", type=Path, metavar="DIR", default=argparse.SUPPRESS,
                    help="the kiosk's data directory (here or before set)")
    ps.add_argument("--print", action="store_true",
                    help="print the hash for a config file's staff_pin instead of keeping it "
                    "in DIR")

    p = sub.add_parser("wipe", help="erase the kiosk's keys and data, for good",
                       description="Destroy the kiosk's keys, then erase its data; it then "
                       "starts as a fresh kiosk. Refused while anything is unsynced (the "
                       "count is shown) unless --discard-unsynced, and while the runtime "
                       "runs. Asks for confirmation unless --yes.")
    _data(p)
    p.add_argument("--discard-unsynced", action="store_true",
                   help="wipe even though the hub lacks some of the kiosk's data (lost)")
    p.add_argument("--yes", action="store_true", help="do not ask for confirmation")

    p = sub.add_parser("quarantine", help="list, release or drop quarantined deltas",
                       description="Deltas from the hub this kiosk refused one by one (a "
                       "stamp too far ahead of its clock, a value that misfits its field): "
                       "list them, release one (merged as if it had just arrived, if it "
                       "passes the checks now) or drop one. Each release or drop is an entry "
                       "in the kiosk's audit. Refused while haven-kiosk run holds the data.")
    _data(p, required=False)
    qs = p.add_subparsers(dest="quarantine_command", metavar="ACTION", required=True)
    q = qs.add_parser("list", help="list them with their ids", description="List them.")
    _action_data(q)
    q.add_argument("--json", action="store_true", help="print them as JSON")
    for verb, what in (("release", "merge one if it passes the checks now"),
                       ("drop", "delete one")):
        q = qs.add_parser(verb, help=what, description=f"{what[0].upper()}{what[1:]}.")
        _action_data(q)
        q.add_argument("id", metavar="ID", help="its id (haven-kiosk quarantine list)")
        q.add_argument("--who", default="local", metavar="OPERATOR",
                       help="who does it, for the audit (default local)")

    p = sub.add_parser("relay", help="sync by a field team's stick: export, import",
                       description="For a kiosk with no link: export writes what the hub "
                       "has not acknowledged to a folder on a stick, sealed to the hub; "
                       "after haven hub relay import, import applies the hub's answers. "
                       "Each is applied once, whatever is copied or carried twice. "
                       "Refused while haven-kiosk run holds the data.")
    _data(p, required=False)
    rs = p.add_subparsers(dest="relay_command", metavar="ACTION", required=True)
    r = rs.add_parser("export", help="write this kiosk's bundles to the stick",
                      description="Write this kiosk's bundles to the stick.")
    _action_data(r)
    r.add_argument("--to", type=Path, required=True, metavar="DIR",
                   help="the folder on the stick (one stick carries many kiosks')")
    r = rs.add_parser("import", help="apply the hub's answers on the stick",
                      description="Apply the hub's answers on the stick, and remove them.")
    _action_data(r)
    r.add_argument("directory", type=Path, metavar="DIR", help="the folder on the stick")

    fridge_command.add_parser(sub, _data, _action_data)

    p = sub.add_parser("schema", help="record types, fields, lanes and merge policies",
                       description="List each record type with its fields, lane and policies.")
    _data(p, required=False)
    p.add_argument("--json", action="store_true", help="print one JSON object")
    return parser


def _open(args: argparse.Namespace, keep_passphrase: bool = False) -> Any:
    """The store of ``--data``; ``keep_passphrase``: its provider keeps the passphrase
    asked (a rotation wraps the next key under it)."""
    from device.store import Store
    from device.store.unlock import PassphraseKeys, unwrap, uses_passphrase
    from device.wipe import refuse_if_destroyed

    refuse_if_destroyed(args.data)  # revoked: its keys are gone, say so rather than which
    if uses_passphrase(args.data):  # its keys open with the passphrase, asked here
        text = read_passphrase(getattr(args, "passphrase_file", None),
                               "The kiosk's passphrase: ")
        keys = PassphraseKeys(args.data, unwrap(args.data, text),
                              text if keep_passphrase else None)
        return Store(args.data, keys, fleet=keys)
    return Store(args.data)


def read_passphrase(file: Path | None, prompt: str, twice: bool = False) -> str:
    """A passphrase: the first line of ``file``, else asked on the terminal (``twice``
    for a new one); never from the command line, where ``ps`` would show it."""
    from device.store import StoreError

    if file is not None:
        try:
            return file.read_text("utf-8").splitlines()[0] if file.stat().st_size else ""
        except (OSError, UnicodeDecodeError) as exc:
            raise StoreError(f"cannot read the passphrase from {file}: "
                             f"{getattr(exc, 'strerror', None) or exc}", "bad-passphrase") from None
    if not sys.stdin.isatty():
        raise StoreError("no terminal to ask the passphrase on: give it in a file "
                         "(--passphrase-file FILE)", "bad-passphrase")
    import getpass

    try:
        text = getpass.getpass(prompt)
        if twice and text != getpass.getpass("The same again: "):
            raise StoreError("the two passphrases differ; nothing changed", "bad-passphrase")
    except EOFError:  # Ctrl-D at the prompt
        raise StoreError("no passphrase given", "bad-passphrase") from None
    return text


def cmd_init(args: argparse.Namespace) -> int:
    from device.enrol import start_as_new_kiosk, write_request
    from device.store import init_store
    from device.store.providers import check_provider
    from device.store.unlock import init_keys, uses_passphrase

    cfg = config.load(args.config, {**config.flags_of(args), "data": args.data})
    keys = None
    if (cfg.key_provider == "passphrase" or args.passphrase_file
            or uses_passphrase(args.data)):
        # a store made under another provider keeps it: new keys would not open its data
        check_provider(args.data, "passphrase")
        fleet = args.fleet_key.read_bytes() if args.fleet_key is not None else None
        new = not uses_passphrase(args.data)
        args.data.mkdir(mode=0o700, parents=True, exist_ok=True)
        keys = init_keys(args.data, read_passphrase(
            args.passphrase_file, "New passphrase to unlock the kiosk (8 or more characters): "
            if new else "The kiosk's passphrase: ", twice=new), fleet)
    with init_store(args.data, args.site, args.letter, args.fleet_key,
                    key_provider=keys, fleet=keys, provider=cfg.key_provider,
                    tcti=cfg.tpm_tcti) as store:
        again = start_as_new_kiosk(store)
        if again is not None:
            print(f"this kiosk was a suspected clone: it has a new identity, and {again} "
                  "writes the hub did not acknowledge go again under it once enrolled")
        request = write_request(store, hub_letter=args.letter is None)
        letter = (f"letter {args.letter.upper()}" if args.letter
                  else "its letter given by the hub")
        print(f"kiosk {store.node:08x} ready in {args.data} (site {args.site!r}, {letter}); "
              f"enrolment request in {request}")
    return 0


#: What ``keys rotate`` refuses with exit 2 (``StoreError`` codes).
ROTATE_REFUSALS = frozenset({"rotation-running", "cannot-rotate", "locked", "wrong-passphrase",
                             "bad-passphrase", "keys-destroyed", "not-initialised"})


def cmd_keys(args: argparse.Namespace) -> int:
    from device.run_lock import RunLockHeld, hold
    from device.store import StoreError, rotation

    try:
        with _open(args, keep_passphrase=True) as store:
            try:
                with hold(args.data):  # no runtime: the walk is done here, now
                    if rotation.under_way(store):
                        print("a rotation cut short resumes (no new key): re-sealing every "
                              "value under its new key...", flush=True)
                    else:
                        rotation.start(store)
                        print("new store key made; re-sealing every value under it...",
                              flush=True)
                    rotation.run(store, report=_rotation_report())
            except RunLockHeld:
                rotation.start(store)
                print(f"new store key made; the haven-kiosk run serving {args.data} re-seals "
                      "in the background (haven-kiosk status shows how far), then destroys "
                      "the old key")
                return 0
    except StoreError as exc:
        if exc.code not in ROTATE_REFUSALS:
            raise
        print(f"haven-kiosk keys rotate: {exc}", file=sys.stderr)
        return 2
    print("store key rotated: every value is sealed under the new key; the old key is "
          "destroyed")
    return 0


def _rotation_report() -> Callable[[dict[str, Any]], None]:
    """Prints a rotation's pass as it begins."""
    shown: set[int] = set()

    def report(state: dict[str, Any]) -> None:
        if state.get("pass") and state["pass"] not in shown:
            shown.add(state["pass"])
            print(f"  pass {state['pass']}: " + ("re-sealing" if state["pass"] == 1 else
                                                 "checking every value opens under it"),
                  flush=True)
    return report


def _print_rotation(st: dict[str, Any]) -> None:
    rot = st.get("key_rotation")
    if rot:
        print(f"store key rotation: {'swapping the keys' if rot['swapping'] else ''}"
              + ("" if rot["swapping"] else
                 f"pass {rot['pass']} ({'re-sealing' if rot['pass'] == 1 else 'checking'}),"
                 f" {rot['walked']:,} of {rot['values']:,} values walked, {rot['resealed']:,}"
                 " re-sealed")
              + (f", {rot['unreadable']:,} unreadable (left as they were)"
                 if rot["unreadable"] else ""))


def cmd_passphrase(args: argparse.Namespace) -> int:
    from device.store.unlock import change_passphrase, keys_path

    if not keys_path(args.data).exists():
        print(f"haven-kiosk passphrase: {args.data} keeps no keys under a passphrase "
              "(made with --key-provider passphrase?)", file=sys.stderr)
        return 1
    old = read_passphrase(args.passphrase_file, "Current passphrase: ")
    new = read_passphrase(args.new_passphrase_file, "New passphrase (8 or more characters): ",
                          twice=True)
    change_passphrase(args.data, old, new)
    print(f"passphrase changed ({keys_path(args.data)}); the kiosk unlocks with the new one")
    return 0


def cmd_enroll(args: argparse.Namespace) -> int:
    from device.enrol import install

    try:
        doc = args.cert.read_bytes()
    except OSError as exc:
        print(f"haven-kiosk enroll: cannot read {args.cert}: {exc.strerror}", file=sys.stderr)
        return 1
    with _open(args) as store:
        cert = install(store, doc)
    print(f"kiosk {cert.device_id} enrolled: site {cert.site!r}, letter {cert.letter}, "
          f"hub {cert.hub_x25519.hex()}")
    return 0


def cmd_sync(args: argparse.Namespace) -> int:
    from device.sync.engine import SyncRefused
    from device.sync.loop import SyncGaveUp, run_sync

    try:
        run_sync(args.data, args.hub, once=args.once, timeout=args.timeout,
                 interval=args.interval, baud=args.baud, link_interval=args.link_interval,
                 keepalive=args.keepalive, poll=getattr(args, "poll_interval", 0.0),
                 report=lambda s: _sync_report(s, args.json),
                 warn=lambda text: print(f"haven-kiosk sync: {text}", file=sys.stderr))
    except SyncRefused as exc:
        print(f"haven-kiosk sync: {exc}", file=sys.stderr)
        return 4
    except SyncGaveUp as exc:
        print(f"haven-kiosk sync: {exc}", file=sys.stderr)
        return 1
    return 0


def _sync_report(s: Any, as_json: bool) -> None:
    if as_json:
        print(json.dumps(vars(s), sort_keys=True), flush=True)
        return
    d = s.documents
    docs = (f"; documents: {d['delivered']} of {d['offered']} delivered"
            f" ({d['chunk_bytes_sent']} B of chunks sent), {len(d['refused'])} refused"
            if d.get("offered") else "")
    scope = (f"; rebased on the hub's snapshot of this kiosk's scope ({s.rebased} deltas)"
             if s.rebased else "") + (f"; {s.refreshed} records rebuilt from the hub's write"
                                      " sets" if s.refreshed else "")
    print(f"synced via {s.url}: {s.batches} batches, {s.pushed} deltas up"
          f" ({s.quarantined} quarantined), {s.pulled} down, {s.bytes_sent} B sent,"
          f" {s.bytes_received} B received" + scope + docs, flush=True)


def cmd_run(args: argparse.Namespace) -> int:
    import asyncio
    import errno
    import logging

    from device.logs.stderr import RedactedStderr
    from device.run_lock import hold
    from device.runtime import Runtime

    cfg = config.load(args.config, config.flags_of(args))
    logging.basicConfig(level=logging.INFO)
    for handler in logging.getLogger().handlers:  # stderr: no argument a patient typed
        handler.setFormatter(RedactedStderr())
    try:
        assert cfg.data is not None  # config.load refuses a config without it
        with hold(cfg.data):  # one runtime per data folder, for as long as it runs
            runtime = Runtime(cfg)
            runtime.config_file = args.config  # what haven tech config set rewrites
            asyncio.run(runtime.run())
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            host, port = cfg.ui_address()
            exc = OSError(f"the page's address {host}:{port} is in use (--ui another port)")
        print(f"haven-kiosk run: {exc}", file=sys.stderr)
        return 1
    return 0


def cmd_checkin(args: argparse.Namespace) -> int:
    with _open(args) as store:
        r = store.checkin(name=args.name, passport=args.passport, code=args.code,
                          birth_year=args.birth_year, reason=args.reason)
    if args.json:
        print(json.dumps({"record_id": r.record_id, "patient_id": r.patient_id,
                          "queue_number": r.queue_number, "code": r.code}, sort_keys=True))
    else:
        print(f"queue number {r.queue_number}\nrecord {r.record_id}\npatient {r.patient_id}"
              + (f"\npatient code {r.code}" if r.code else ""))
    return 0


def cmd_put(args: argparse.Namespace) -> int:
    with _open(args) as store:
        print(store.put_text(args.type, args.id, args.fields))
    return 0


def cmd_delete(args: argparse.Namespace) -> int:
    with _open(args) as store:
        store.delete(args.id)
    print(f"deleted {args.id}")
    return 0


def cmd_resolve(args: argparse.Namespace) -> int:
    with _open(args) as store:
        print(store.resolve(args.conflict, keep=args.keep, assignments=args.set))
    return 0


def cmd_attach(args: argparse.Namespace) -> int:
    from dataclasses import asdict

    from device.sync.document_store import attach

    with _open(args) as store:
        done = attach(store, args.file, patient=args.patient, title=args.title,
                      content_type=args.content_type)
    print(json.dumps(asdict(done), sort_keys=True) if args.json else done.record_id)
    return 0


def cmd_dump(args: argparse.Namespace) -> int:
    with _open(args) as store:
        data = store.dump()
    sys.stdout.flush()
    sys.stdout.buffer.write(data)
    sys.stdout.buffer.flush()
    return 0


def _running(data: Path) -> dict[str, Any] | None:
    """The status of the ``haven-kiosk run`` serving ``data``, from its memory (what its
    LED and page show, its link, its last sync); None when none answers."""
    from device.hardware.remote import HwRemoteError, sync_status

    try:
        return sync_status(data)
    except HwRemoteError:
        return None


def cmd_status(args: argparse.Namespace) -> int:
    from device.store.unlock import uses_passphrase
    from device.sync.document_store import summary_of
    from protocol.driver.wall_clock import timed

    cfg = config.load(args.config, {"data": args.data})
    if uses_passphrase(args.data):  # never asked here: status must not wait on a prompt
        return _locked_status(args, cfg)
    with _open(args) as store:
        st = store.status()
        st["documents"] = summary_of(store)
    st.update(_keyless_status(args.data, cfg))
    run = st["running"]
    # names that say what they count, times as the hub's status gives them
    st["conflicts_held"], st["stale_records"] = st.pop("held"), st.pop("stale")
    st["quarantine"] = [timed(q, "received_at") for q in st["quarantine"]]
    if args.json:
        print(json.dumps(st, sort_keys=True, indent=1))
        return 0
    print(f"kiosk {st['node']}  site {st['site']!r}  letter {st['letter']}  "
          f"number {st['kiosk_number'] if st['kiosk_number'] is not None else 'none yet'}  "
          f"records {st['records']}  last sync {st['last_sync'] or 'never'}")
    print("status: " + (f"{run['state']} (haven-kiosk run, pid {run['pid']}, link "
                        f"{run['link']}; the outbox below is what waits for the hub)"
                        if run is not None else "no haven-kiosk run answers for this folder"))
    if run is not None and run.get("locked"):
        print("LOCKED: the running kiosk waits for staff to unlock it on the staff screen; "
              "its check-ins are kept sealed meanwhile, no patient is looked up and nothing "
              "syncs")
    _print_alert_and_scope(args.data, st)
    lanes = st["outbox"]["lanes"]
    print("outbox:" + ("" if lanes else " empty"))
    for lane, info in sorted(lanes.items()):
        print(f"  lane {lane} ({crdt_schema.LANES[int(lane)]}): {info['entries']} entries, "
              f"{info['bytes']} bytes, {info['waiting_retry']} waiting to retry")
    for q in st["outbox"]["quarantined"]:
        print(f"  quarantined entry {q['seq']} (lane {q['lane']}): {q['error']}")
    print(f"conflicts: {len(st['conflicts'])} ({st['conflicts_held']} held)")
    for c in st["conflicts"]:
        print(f"  {c['id']} {c['class']} {c['severity']} record {c['record_id']} "
              f"versions {' '.join(c['versions'])}")
    print(f"quarantine: {len(st['quarantine'])}")
    for q in st["quarantine"]:
        print(f"  {q['id']}: {q['received_at']} {q['code']}")
    docs = st["documents"]
    print("documents:" + ("".join(f" {n['documents']} {state} ({n['bytes']} bytes)"
                                  for state, n in sorted(docs["states"].items())) or " none"))
    for r in docs["refused"]:
        print(f"  refused, not sent again: {r['record_id']}: {r['reason']}")
    _print_rotation(st)
    _print_storage(st)
    return 0


def _keyless_status(data: Path, cfg: config.KioskConfig) -> dict[str, Any]:
    """What ``status`` reads without the store's key: the disk, the sync state
    (``sync.db``), the running kiosk, a rotation of the store key under way."""
    from device.health.storage_guard import look
    from device.store import rotation
    from device.sync.state import (
        alert_of,
        held_upto_of,
        last_gc_of,
        last_sync_of,
        scope_of,
        stable_of,
    )
    from protocol.driver.wall_clock import cursor_text, timed

    st: dict[str, Any] = {"storage": look(data, config.storage_limits(cfg))}
    st["last_sync"] = last_sync_of(data)
    st["running"] = run = _running(data)  # sync.db keeps an idle round's time hourly
    if run is not None and run.get("last_sync"):
        st["last_sync"] = max(st["last_sync"] or "", str(run["last_sync"]))
    st["last_sync"] = _utc(st["last_sync"])
    st["alert"] = alert_of(data)
    st["held_from_batch"] = held_upto_of(data)
    scope = scope_of(data)
    st["scope"] = None if scope is None else {
        "role": scope.role, "site": scope.site, "day": scope.day,
        "window_days": scope.window_days if scope.role == "clinician" else None}
    st["stable_point"] = stable_of(data)
    st["stable_point_reached_hub_by"] = cursor_text(st["stable_point"])
    gc = last_gc_of(data)
    st["last_gc"] = None if not gc else timed(gc, "at")
    st["key_rotation"] = rotation.progress(data)
    return st


def _locked_status(args: argparse.Namespace, cfg: config.KioskConfig) -> int:
    """``status`` of a kiosk whose keys are under a passphrase: the store is not opened
    (no passphrase is asked: a status never waits on a prompt); what is known without the
    keys (the running kiosk, the check-ins sealed while locked, the sync state, the disk)."""
    from device.store.pending import PendingCheckins

    st = _keyless_status(args.data, cfg)
    run = st["running"]
    with PendingCheckins(args.data) as pending:
        sealed = pending.count()
    # locked unless a running kiosk says staff unlocked it: nothing here opens the store
    st.update(locked=True if run is None else bool(run.get("locked")), pending_sealed=sealed)
    if args.json:
        print(json.dumps(st, sort_keys=True, indent=1))
        return 0
    print(f"keys under a passphrase: the store is not opened here; {sealed} check-ins "
          f"sealed while locked wait for the unlock; last sync {st['last_sync'] or 'never'}")
    print("status: " + ("no haven-kiosk run answers for this folder: LOCKED until staff "
                        "unlock it on the staff screen" if run is None else
                        f"{run['state']}" + (", LOCKED: staff unlock it on the staff screen; "
                                             "no patient is looked up and nothing syncs "
                                             "until then" if st["locked"] else ", unlocked")
                        + f" (haven-kiosk run, pid {run['pid']})"))
    _print_alert_and_scope(args.data, st)
    _print_rotation(st)
    _print_storage(st)
    return 0


def _print_alert_and_scope(data: Path, st: dict[str, Any]) -> None:
    from device.sync.engine import describe_scope
    from device.sync.state import scope_of
    from protocol.sync.round_common import DECOMMISSIONED

    if st["alert"] == DECOMMISSIONED:
        print(f"{st['alert']}: the hub took this kiosk out of service; what it writes "
              "waits in the hub's quarantine for a person (call a technician)")
    elif st["alert"]:
        print(f"{st['alert']}: another kiosk runs with this identity; call a technician "
              + ("(the hub holds this kiosk's batches from batch "
                 f"{st['held_from_batch']}: re-provision this one, README \"A cloned "
                 "kiosk\")" if st["held_from_batch"] else "(its batches are on the hub's chain)"))
    scope = scope_of(data)
    print("scope: " + (describe_scope(scope) if scope is not None
                       else "not named yet (the hub names it at the next sync)"))
    print(f"stable point: {_stable_line(st['stable_point'])}"
          f"  last GC: {_gc_line(st['last_gc'])}")


def _print_storage(st: dict[str, Any]) -> None:
    disk = st["storage"]
    print(f"storage: {disk['free_mib']:.2f} MiB free of {disk['total_mib']:.2f} MiB"
          + STORAGE_WARNINGS[disk["level"]].format(**disk))


def _stable_line(cursor: int | None) -> str:
    """The stable point, with the hub's time it stands for: a cursor is an arrival
    number, at least the hub's clock in microseconds when the delta arrived."""
    from protocol.driver.wall_clock import cursor_text

    if cursor is None:
        return "none yet"
    by = cursor_text(cursor)
    return f"cursor {cursor}" + (f" (every replica holds what reached the hub by {by})"
                                 if by else "")


def _gc_line(gc: dict[str, Any] | None) -> str:
    """The last garbage collection that dropped anything, in words."""
    from device.sync.collect import DROPPED

    if not gc:
        return "nothing collected yet"
    counts = ", ".join(f"{v} {DROPPED.get(k, k)}" for k, v in sorted(gc.items())
                       if k not in ("at", "at_ms"))
    return f"{gc['at']}, dropped {counts or 'nothing'}"


def _utc(text: str | None) -> str | None:
    """An ISO 8601 time as the other times shown (UTC, ``Z``); as it is if not one."""
    from protocol.driver.wall_clock import utc_text

    try:
        when = datetime.datetime.fromisoformat(text) if text else None
    except ValueError:
        return text
    if when is None or when.tzinfo is None:
        return text
    return utc_text(round(when.timestamp() * 1000))


def cmd_hw(args: argparse.Namespace) -> int:
    from device.hardware import remote as hw_remote

    try:
        if args.action == "press":
            st = hw_remote.press(args.data, args.hold)
        else:
            st = hw_remote.state(args.data)
    except (hw_remote.HwRemoteError, ValueError) as exc:
        print(f"haven-kiosk hw: {exc}", file=sys.stderr)
        return 1
    if args.action == "state":
        print(json.dumps(st, sort_keys=True))
    elif args.action == "led":
        print(st["led"])
    else:
        held = args.hold >= st["hold_time"]
        print(f"pressed {args.hold:g} s: " + ("a long press, sync now" if held else
              f"a short press (a long press is {st['hold_time']:g} s)")
              + f"; LED {st['led']}")
    return 0


def cmd_staff_pin(args: argparse.Namespace) -> int:
    import getpass

    from device.ui.pin import PinError, check_pin, hash_pin, write_pin_file

    if not args.print and args.data is None:
        print("haven-kiosk staff-pin set: give --data DIR (or --print)", file=sys.stderr)
        return 2
    if sys.stdin.isatty():
        pin = getpass.getpass("New staff PIN (6 to 12 digits): ")
        if pin != getpass.getpass("The same PIN again: "):
            print("haven-kiosk staff-pin set: the two PINs differ; nothing changed",
                  file=sys.stderr)
            return 1
    else:
        pin = sys.stdin.readline().strip()
    try:
        check_pin(pin)
    except PinError as exc:
        print(f"haven-kiosk staff-pin set: {exc}; nothing changed", file=sys.stderr)
        return 1
    if args.print:
        print(hash_pin(pin))
        return 0
    try:
        path = write_pin_file(args.data, pin)
    except (PinError, OSError) as exc:
        print(f"haven-kiosk staff-pin set: {exc}; nothing changed", file=sys.stderr)
        return 1
    print(f"staff PIN set (scrypt hash in {path})")
    return 0


def cmd_schema(args: argparse.Namespace) -> int:
    desc = crdt_schema.describe()
    if args.json:
        print(json.dumps(desc, sort_keys=True, indent=1))
        return 0
    for name, t in desc.items():
        print(f"{name} (FHIR {t['fhir']}, schema v{t['version']}, lane {t['lane']}"
              f"{', held on conflict' if t['held_on_conflict'] else ''})")
        for fname, f in t["fields"].items():
            print(f"  {f['number']:>2} {fname:<18} {f['kind']:<9} {f['policy']}")
    return 0


def cmd_wipe(args: argparse.Namespace) -> int:
    from device.audit import PRESENCE
    from device.run_lock import hold
    from device.wipe import (
        check_unsynced,
        keys_destroyed,
        refuse_unless_kiosk_data,
        unsynced_of,
        wipe_folder,
    )

    refuse_unless_kiosk_data(args.data)
    with hold(args.data):  # never under a running runtime
        if keys_destroyed(args.data) is None:  # refused before anything is asked
            check_unsynced(unsynced_of(args.data), args.discard_unsynced)
        if not args.yes:
            if not sys.stdin.isatty():
                print("haven-kiosk wipe: not confirmed (no terminal to ask on): pass --yes",
                      file=sys.stderr)
                return 1
            answer = input(f"Destroy the keys and erase all the data of the kiosk in "
                           f"{args.data}, for good? Type wipe to confirm: ")
            if answer.strip() != "wipe":
                print("haven-kiosk wipe: not confirmed: nothing erased", file=sys.stderr)
                return 1
        report = wipe_folder(args.data, who=PRESENCE, discard_unsynced=args.discard_unsynced)
    lost = report.discarded
    print(f"kiosk in {args.data} wiped: keys destroyed ({', '.join(report.keys) or 'none left'}),"
          f" data erased; it starts as a fresh kiosk"
          + (f"; discarded: {lost.describe()}" if lost.total else ""))
    if report.audit_synced is None:
        print("note: no audit entry: the kiosk's keys were destroyed already (revoked)")
    elif not report.audit_synced:
        print("note: the wipe's audit entry could not reach the hub from here: it was lost "
              "with the data")
    return 0


def cmd_quarantine(args: argparse.Namespace) -> int:
    from device.run_lock import hold
    from device.store import quarantine

    if args.data is None:
        print("haven-kiosk quarantine: give --data DIR", file=sys.stderr)
        return 2
    with hold(args.data), _open(args) as store:  # never under a running runtime
        if args.quarantine_command == "list":
            items = quarantine.listing(store)
            if args.json:
                print(json.dumps(items, sort_keys=True))
                return 0
            print(f"{len(items)} quarantined")
            for item in items:
                write = (f", record {item['record']} by {item['node']}" if "record" in item
                         else "")
                print(f"  {item['id']}: {item['code']}{write}: {item['reason']}")
        elif args.quarantine_command == "release":
            print(quarantine.release(store, args.id, args.who))
        else:
            print(quarantine.drop(store, args.id, args.who))
    return 0


def cmd_relay(args: argparse.Namespace) -> int:
    from device.enrol import load
    from device.relay.answers import import_answers
    from device.relay.export import export
    from device.run_lock import hold
    from device.sync.state import SyncState

    if args.data is None:
        print("haven-kiosk relay: give --data DIR", file=sys.stderr)
        return 2
    with hold(args.data), _open(args) as store:
        state = SyncState(args.data)
        try:
            if args.relay_command == "export":
                out = export(store, state, load(args.data), args.to)
                print(f"{len(out.files)} bundle(s) written to {args.to}: {out.batches} "
                      f"batches, {out.deltas} deltas, {out.bytes} B ({out.padding} B of "
                      "padding)")
                return 0
            got = import_answers(store, state, load(args.data), args.directory)
        finally:
            state.close()
    for line in got.problems:
        print(f"haven-kiosk relay import: {line}", file=sys.stderr)
    rebased = f", rebased on the hub's snapshot ({got.rebased} deltas)" if got.rebased else ""
    print(f"{got.answers} answer(s) applied: {got.acked} batches acknowledged, "
          f"{got.pulled} deltas merged{rebased}; {got.others} file(s) for the hub or other "
          "kiosks left on the stick")
    return 3 if got.problems else 0


def cmd_fridge(args: argparse.Namespace) -> int:
    from device.enrol import ensure_keys

    kiosk_public = ensure_keys(args.data)[0].public_key().public_bytes_raw()
    with _open(args) as store:
        return fridge_command.run(args, store, kiosk_public)


COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "init": cmd_init, "enroll": cmd_enroll, "sync": cmd_sync, "run": cmd_run,
    "checkin": cmd_checkin, "attach": cmd_attach,
    "put": cmd_put, "delete": cmd_delete,
    "resolve": cmd_resolve, "dump": cmd_dump, "status": cmd_status, "hw": cmd_hw,
    "schema": cmd_schema, "staff-pin": cmd_staff_pin, "wipe": cmd_wipe,
    "quarantine": cmd_quarantine, "passphrase": cmd_passphrase, "keys": cmd_keys,
    "relay": cmd_relay, "fridge": cmd_fridge,
}


def _failure(exc: Exception) -> tuple[str, int] | None:
    from device.exc import DeviceError, HardwareError
    from device.store import StoreError

    if isinstance(exc, config.ConfigError):
        return str(exc), 2
    if isinstance(exc, HardwareError):  # no GPIO pins, a printer that will not open
        return str(exc), 1
    if isinstance(exc, (StoreError, ProtocolError)):  # DriverError included
        return f"error: {exc}", 1
    if isinstance(exc, DeviceError):  # the run lock held, a missing data folder
        return str(exc), 1
    return None


def main(argv: list[str] | None = None) -> int:
    return run_command(build_parser(), argv, lambda args: COMMANDS[args.command](args),
                       _failure)


if __name__ == "__main__":
    sys.exit(main())
