"""``haven hub ...`` and ``haven review ...``: thin shells over ``hub.Hub``.

Each command calls one ``Hub`` method and prints what it returns; the hub
raises ``HavenError``s, which ``host.cli`` turns into one line and an exit code.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from host.errors import UsageError

if TYPE_CHECKING:
    from host.hub.hub import Hub
    from host.hub.limits import Limits


def _data(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", type=Path, required=True, metavar="DIR",
                   help="the hub's data directory")


def _write_cert(path: Path, cert: bytes, replaced: str | None) -> None:
    from protocol.sync.certificate import read_certificate

    try:
        path.write_bytes(cert)
    except OSError as exc:
        raise UsageError(f"cannot write {path}: {exc.strerror} (the kiosk is "
                         "approved: run this again with another --out)") from None
    issued = read_certificate(cert)
    print(f"certificate written to {path}: kiosk {issued.device_id} at site "
          f"{issued.site!r}, letter {issued.letter}, number {issued.kiosk_number}"
          + (f"; kiosk {replaced} retired (revoked: replaced)" if replaced else ""))


def _kiosk(p: argparse.ArgumentParser) -> None:
    p.add_argument("device", metavar="KIOSK", help="the kiosk's id (haven hub status lists "
                   "them)")


def _window_needs_role(args: argparse.Namespace) -> None:
    # An empty --role is no role, not the default: it would make a door kiosk full.
    if args.role is not None and not args.role.strip():
        raise UsageError("--role is empty: door, clinician or full")
    if args.window is not None and args.role is None:
        raise UsageError("--window goes with --role clinician")
    args.window = _days(args.window)


def _seconds(text: str, flag: str) -> float:
    """A number of seconds given to ``flag``, 0 or more; ``UsageError`` otherwise."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not 0 <= value < 1e9:
        raise UsageError(f"{flag} is a number of seconds (0 or more), not {text!r}")
    return value


def _days(text: str | None) -> int | None:
    """``--window`` as a number of days; its range is the hub's to check."""
    from protocol.sync.scope import MAX_WINDOW_DAYS

    if text is None:
        return None
    if not text.strip().isdigit() or not text.strip().isascii() or len(text.strip()) > 9:
        raise UsageError(f"--window is a number of days (a clinician station's: 1 to "
                         f"{MAX_WINDOW_DAYS}), not {text!r}")
    return int(text)


def _still_served(hub: Hub, device_id: str, doing: str) -> None:
    """Refuse ``doing`` to a kiosk the hub no longer serves: it would change nothing the
    kiosk holds, yet read as done."""
    dev = hub.store.device(device_id)
    if dev is None:
        raise UsageError(f"no kiosk {device_id!r} (haven hub status lists them)")
    if dev.state in ("decommissioned", "revoked"):
        raise UsageError(f"kiosk {device_id} is {dev.state} already: {doing} changes "
                         "nothing")


def _role_arguments(p: argparse.ArgumentParser, name: str, text: str) -> None:
    p.add_argument(name, metavar="ROLE", help=text)
    p.add_argument("--window", metavar="DAYS",
                   help="a clinician station's window: the check-ins of the last DAYS days "
                   "and their patients' records (default 30)")


def add_parsers(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    hub = sub.add_parser("hub", help="run and administer the hub",
                         description="The hub: keys, enrolment, sync service, state.")
    hs = hub.add_subparsers(dest="hub_command", metavar="HUB_COMMAND", required=True)
    p = hs.add_parser("init", help="create the hub's keys and the fleet key",
                      description="Create the hub's keys, the fleet's patient-id key, its store.")
    _data(p)
    p.add_argument("--key-provider", choices=("file", "tpm"), default="file",
                   help="where the key that seals the hub's data at rest is kept: file "
                   "(hub_store.key, owner-only; the default) or tpm (sealed to this "
                   "machine's TPM 2.0: a stolen disk reads nothing; a cleared or lost "
                   "TPM loses the data at rest with it)")
    p.add_argument("--tpm-tcti", metavar="TCTI",
                   help="the TPM, as tpm2-tools name it (default device:/dev/tpmrm0)")
    p.add_argument("--db", metavar="URL",
                   help="keep the hub's store in PostgreSQL at URL (postgresql://...; several "
                   "hosts with target_session_attrs=read-write for a standby that takes "
                   "over; default $HAVEN_HUB_DATABASE, else hub.db in the data folder)")
    p = hs.add_parser("enroll", help="approve a kiosk's enrolment request",
                      description="Approve REQUEST (a kiosk's enrolment.req) and write its "
                      "certificate to CERT. A request without a letter gets the first "
                      "letter free at its site.")
    _data(p)
    p.add_argument("request", type=Path, metavar="REQUEST",
                   help="the kiosk's enrolment request (haven-kiosk init writes it)")
    p.add_argument("--out", type=Path, required=True, metavar="CERT",
                   help="where to write the kiosk's certificate")
    p.add_argument("--replaces", metavar="OLD_DEVICE_ID",
                   help="a dead kiosk at the same site: the new one takes over its letter, "
                   "and it is retired (revoked: replaced)")
    p.add_argument("--from", dest="from_day", metavar="DAY",
                   help="with --replaces: the first day (UTC, YYYY-MM-DD) whose queue "
                   "numbers are the new kiosk's (default today; after the old kiosk was "
                   "last heard from)")
    _role_arguments(p, "--role", "what the kiosk holds: door (a kiosk at the door: today's "
                    "queue and its site's year verifiers, no names), clinician (its site's "
                    "patients checked in within the window) or full (every record; the "
                    "default, as every kiosk before roles)")
    p = hs.add_parser("role", help="change what a kiosk holds (its scope)",
                      description="Give KIOSK another role: door, clinician or full. At its "
                      "next sync it is told, and keeps only its new scope (its unsynced "
                      "writes stay until synced).")
    _data(p)
    _kiosk(p)
    _role_arguments(p, "role", "door, clinician or full")
    p = hs.add_parser("decommission", help="retire a kiosk that is gone",
                      description="A kiosk that is gone (lost, broken, stolen) stops holding "
                      "the stable point of its scope back, so the others collect their "
                      "garbage. Whatever it still sends is quarantined (haven hub "
                      "quarantine list). Revoke it too if its key may be in other hands.")
    _data(p)
    _kiosk(p)
    p = hs.add_parser("replace", help="give a dead kiosk's letter to an enrolled kiosk",
                      description="Retire OLD_DEVICE_ID (revoked: replaced) and give its "
                      "letter at its site to NEW_DEVICE_ID from DAY; the new kiosk's "
                      "certificate, with that letter, goes to CERT (install it with "
                      "haven-kiosk enroll CERT). The old kiosk's unsynced data, if its card "
                      "can be read, comes through a relay bundle, not this command.")
    _data(p)
    p.add_argument("old", metavar="OLD_DEVICE_ID", help="the kiosk replaced")
    p.add_argument("--by", required=True, metavar="NEW_DEVICE_ID",
                   help="the enrolled kiosk that takes over its letter")
    p.add_argument("--from", dest="from_day", metavar="DAY",
                   help="the first day (UTC, YYYY-MM-DD) whose queue numbers are the new "
                   "kiosk's (default today; after the old kiosk was last heard from)")
    p.add_argument("--out", type=Path, required=True, metavar="CERT",
                   help="where to write the new kiosk's certificate")
    p = hs.add_parser("approve", help="approve kiosks to be provisioned offline",
                      description="Write COUNT approvals for kiosks at SITE to FILE, for a "
                      "technician to provision kiosks where the hub is out of reach. Each "
                      "is signed by the hub and expires; each carries a letter, a kiosk id "
                      "(node) and a kiosk number the hub reserves for it alone. A kiosk's "
                      "first sync with its approval makes it enrolled; a second kiosk "
                      "with the same approval is held as a suspected clone.")
    _data(p)
    p.add_argument("--site", required=True, help="the site the kiosks are for")
    p.add_argument("--count", type=int, required=True, metavar="N",
                   help="how many kiosks (1 to 26: each has a letter of its own at the site)")
    p.add_argument("--hours", type=float, default=168.0, metavar="H",
                   help="how long the approvals last, until the kiosks' first sync "
                   "(default 168: a week; at most 744)")
    p.add_argument("--out", type=Path, required=True, metavar="FILE",
                   help="where to write the approvals")
    _role_arguments(p, "--role", "what the kiosks hold once enrolled: door, clinician or "
                    "full (the default)")
    p = hs.add_parser("revoke", help="revoke a kiosk", description="Revoke a kiosk: the hub "
                      "refuses its sessions from now on.")
    _data(p)
    p.add_argument("device", metavar="DEVICE_ID",
                   help="the kiosk's id (haven hub status lists them)")
    p = hs.add_parser("serve", help="serve kiosks over TCP and serial links",
                      description="Serve kiosk sync sessions until interrupted.")
    _data(p)
    p.add_argument("--listen", action="append", default=[], metavar="tcp://HOST:PORT",
                   help="a TCP address to serve kiosks on (repeat for more)")
    p.add_argument("--serial", action="append", default=[], metavar="URL",
                   help="a serial port or pyserial URL with a kiosk on the other end")
    p.add_argument("--baud", type=int, help="serial line speed (pacing)")
    p.add_argument("--max-ahead", type=float, default=300.0, metavar="S",
                   help="quarantine deltas stamped more than S seconds ahead (default 300)")
    p.add_argument("--reuse-port", action="store_true",
                   help="share the --listen ports with other haven hub serve processes of "
                   "this hub (SO_REUSEPORT: the kernel spreads kiosks over them); the hub "
                   "must be on PostgreSQL")
    _serve_limits(p)
    p = hs.add_parser("export", help="export the records as FHIR R4 (Bulk Data NDJSON)",
                      description="Write the current records as FHIR R4 resources, one NDJSON "
                      "file per type, and manifest.json (Bulk Data's manifest; its "
                      "extension.cursor is what --since takes next time). DIR must be new or "
                      "empty: the export is written whole or not at all.")
    _data(p)
    p.add_argument("--fhir", type=Path, required=True, metavar="DIR",
                   help="the folder to write (new, or empty)")
    p.add_argument("--since", metavar="CURSOR",
                   help="only records changed after an earlier export's cursor")
    p.add_argument("--patient-system", metavar="URI", help="the system URI of the fleet's "
                   "patient ids in Patient.identifier (default urn:haven:HUB_ID:patient)")
    p.add_argument("--document-url", metavar="URL", help="what a large document's url "
                   "begins with, its record id after it (default haven://HUB_TAG/documents/, "
                   "HUB_TAG the first 16 hex digits of the hub id)")
    p = hs.add_parser("dump", help="print the merged state as canonical JSON",
                      description="Print every record as canonical JSON (the kiosk's format).")
    _data(p)
    p = hs.add_parser("history", help="list the writes to one record: when, who, what",
                      description="List every write the hub holds for one record, oldest "
                      "first: when, which kiosk (or the hub) wrote it, and what it set (a "
                      "check-in called, seen, or a no-show; its identity confirmed).")
    _data(p)
    p.add_argument("record", metavar="RECORD_ID", help="the record's id (haven hub dump "
                   "shows them)")
    p.add_argument("--json", action="store_true", help="print them as JSON")
    p = hs.add_parser("audit", help="technicians' actions on kiosks, each kiosk's chain checked",
                      description="List what technicians did on each kiosk, oldest first, "
                      "as the kiosk signed and chained it: who (the technician's certificate "
                      "serial, or presence at the button), what, when and the result, each "
                      "entry verified against the kiosk's key and the entry before it. Gaps "
                      "(entries missing) and entries forged or edited are shown loudly, and "
                      "the exit status is 1 if there are any. (A record's writes are "
                      "haven hub history.)")
    _data(p)
    p.add_argument("--kiosk", metavar="DEVICE_ID",
                   help="one kiosk only (haven hub status lists them)")
    p.add_argument("--json", action="store_true", help="print them as JSON")
    p = hs.add_parser("status", help="kiosks, backlog, conflicts, quarantine, documents",
                      description="List the kiosks, when each was last seen, the backlog, "
                      "the conflicts and the documents held.")
    _data(p)
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p = hs.add_parser("alerts", help="what in the fleet needs a person, and what to do",
                      description="Kiosks not seen for longer than expected, low on disk or "
                      "memory, with a failing printer or sensor (from their telemetry), "
                      "suspected clones, quarantined deltas, audit-chain gaps and conflicts "
                      "waiting over a day; each with what to do. The exit status is 1 if "
                      "there are any.")
    _data(p)
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p = hs.add_parser("held", help="list the batches held from a suspected clone",
                      description="List every batch held from a kiosk suspected of running "
                      "in two places, with the writes it carries (never applied: "
                      "re-provisioning the copy brings them in; see README).")
    _data(p)
    p.add_argument("--json", action="store_true", help="print them as JSON")
    p = hs.add_parser("clear-clone", help="clear a kiosk's suspected-clone flag",
                      description="Clear the suspected-clone flag once every other copy "
                      "was re-provisioned; the kiosk's status clears at its next sync. Held "
                      "batches stay listed.")
    _data(p)
    p.add_argument("device", metavar="DEVICE_ID",
                   help="the kiosk's id (haven hub status lists them)")

    _quarantine_parsers(hs)
    _technician_parsers(hs)
    _keys_parsers(hs)

    p = hs.add_parser("erase", help="erase a patient's data, on the hub and every kiosk",
                      description="Erase a patient on request: the hub writes the patient's "
                      "erasure record (who asked, when, why) and deletes each of their "
                      "records, keeps of every write only its husk (when, by which kiosk; no "
                      "value), and drops their documents; every kiosk does the same at its "
                      "next sync. Prints a receipt line to keep: after restoring a backup "
                      "taken before the erasure, run it again.")
    _data(p)
    who = p.add_mutually_exclusive_group(required=True)
    who.add_argument("patient", nargs="?", metavar="PATIENT_ID",
                     help="the patient's id (haven hub dump shows them)")
    who.add_argument("--passport", metavar="N", help="the patient's passport number")
    who.add_argument("--code", metavar="C", help="the patient's short code (XXXX-XXXX)")
    p.add_argument("--by", required=True, metavar="NAME",
                   help="who asked for it or approved it (kept in the erasure record)")
    p.add_argument("--reason", default="patient-request", metavar="CODE",
                   help="why (default patient-request)")
    p = hs.add_parser("promote", help="make check-ins' claims records where none exists",
                      description="Make what patients typed at a kiosk (a check-in's claim) "
                      "the patient's record where the hub holds none, and mark each "
                      "check-in's identity: promoted, match, or mismatch (left for staff to "
                      "confirm). Never changes a record that exists.")
    _data(p)
    p.add_argument("--json", action="store_true", help="print what was done as JSON")

    relay = hs.add_parser("relay", help="sync kiosks that have no link, by a stick",
                          description="Relay bundles: kiosks with no link sync through a "
                          "field team's stick (haven-kiosk relay export, then import).")
    rls = relay.add_subparsers(dest="relay_command", metavar="ACTION", required=True)
    p = rls.add_parser("import", help="apply the kiosks' bundles, write their answers",
                       description="Apply each kiosk's bundles on the stick once (a copy or "
                       "a replay changes nothing), write the answers back to the same "
                       "folder (acks, the changes in the kiosk's scope, revocations, the "
                       "hub's signed time) and remove the bundles applied. Every file "
                       "refused gets one line; the exit status is then 3.")
    _data(p)
    p.add_argument("directory", type=Path, metavar="DIR", help="the folder on the stick")

    review = sub.add_parser("review", help="list and resolve held conflicts",
                            description="Conflicts the hub holds for review.")
    rs = review.add_subparsers(dest="review_command", metavar="REVIEW_COMMAND", required=True)
    p = rs.add_parser("list", help="list conflicts", description="List conflicts with both "
                      "versions.")
    _data(p)
    p.add_argument("--json", action="store_true", help="print them as JSON")
    p = rs.add_parser("resolve", help="resolve a conflict",
                      description="Resolve a conflict by keeping a version or setting values; "
                      "the resolution reaches every kiosk at its next sync.")
    _data(p)
    p.add_argument("conflict", metavar="CONFLICT_ID",
                   help="the conflict (haven review list shows them)")
    how = p.add_mutually_exclusive_group(required=True)
    how.add_argument("--keep", metavar="VERSION_ID", help="keep this version")
    how.add_argument("--set", nargs="+", metavar="FIELD=VALUE", help="set these values")


def _keys_parsers(hs: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    from host.hub import backup_commands

    keys = hs.add_parser("keys", help="back up, restore and rotate the hub's keys",
                         description="The hub's keys: sealed to a recovery key for a safe "
                         "(backup), brought back from it (restore); a new data key for what "
                         "it stores (rotate).")
    ks = keys.add_subparsers(dest="keys_command", metavar="KEYS_COMMAND", required=True)
    backup_commands.add_parsers(hs, ks)
    p = ks.add_parser("rotate", help="seal the hub's data under a new data key",
                      description="Add a new data key: it seals everything the hub stores "
                      "from now on. A running haven hub serve re-seals what the older key "
                      "sealed in the background, a slice at a time, without stopping; the "
                      "older key is deleted when nothing it sealed is left (haven hub status "
                      "shows the progress). A power cut at any point loses nothing.")
    _data(p)
    p = ks.add_parser("rotate-fleet", help="rotate the fleet key: patient ids migrate to "
                      "a new generation", description="Add a generation of the fleet key "
                      "(fleet.N.key beside fleet.key; back it up with haven hub keys backup) "
                      "and migrate every patient id to it: the new id is a keyed hash of the "
                      "old one, each patient's record moves to it and every record naming the "
                      "patient follows; erased patients are left as they are. Kiosks take the "
                      "new key at their next sync; writes from kiosks still on the old one "
                      "are remapped as they arrive. The migration runs here to the end, a "
                      "slice at a time (a running haven hub serve goes on with it too); cut "
                      "short, it resumes where it stopped (--resume, or the running hub).")
    _data(p)
    p.add_argument("--resume", action="store_true", help="make no new key: finish the "
                   "migration under way")
    p.add_argument("--no-wait", action="store_true", help="leave the migration to the "
                   "running haven hub serve")


def _quarantine_parsers(hs: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    q = hs.add_parser("quarantine", help="list, release or drop quarantined deltas",
                      description="Deltas the hub refused one by one (a stamp too far "
                      "ahead, a value that misfits its field): list them, release one "
                      "(applied as if it had just arrived, if it passes the checks now) "
                      "or drop one. Each release or drop goes to the hub's log.")
    qs = q.add_subparsers(dest="quarantine_command", metavar="ACTION", required=True)
    p = qs.add_parser("list", help="list quarantined deltas", description="List them, "
                      "oldest first, with their ids.")
    _data(p)
    p.add_argument("--json", action="store_true", help="print them as JSON")
    for action, text in (("release", "apply one if it passes the checks now"),
                         ("drop", "delete one")):
        p = qs.add_parser(action, help=text, description=f"{text[0].upper()}{text[1:]}.")
        _data(p)
        p.add_argument("id", metavar="ID", help="its id (haven hub quarantine list)")
        if action == "release":
            p.add_argument("--max-ahead", default="300", metavar="S",
                           help="refuse a stamp still more than S seconds ahead (default "
                           "300, as haven hub serve)")
            p.add_argument("--force", action="store_true",
                           help="release a delta from a decommissioned kiosk (refused "
                           "without it: the kiosk is out of service, and its write may "
                           "bring back a record deleted since)")


def _rotate_fleet(hub: Hub, args: argparse.Namespace) -> None:
    if not args.resume:
        generation = hub.rotate_fleet()
        print(f"fleet key generation {generation} in effect: kiosks take it at their next "
              "sync (back up the hub's keys again: haven hub keys backup)")
    if args.no_wait:
        return
    for _ in range(1_000_000):  # bounded: each slice moves the migration on
        if not hub.fleet_slice():
            break
    from host.hub.fleet_rotation import progress

    done = progress(hub.store)
    if done is None:
        raise UsageError("the fleet key was never rotated: nothing to resume")
    print(f"{done['patients']} patients migrated to generation {done['generation']}")


def _quarantine(hub: Hub, args: argparse.Namespace) -> None:
    from host.hub import quarantine

    if args.quarantine_command == "list":
        items = quarantine.listing(hub.store)
        if args.json:
            print(json.dumps(items, sort_keys=True))
            return
        print(f"{len(items)} quarantined")
        for q in items:
            write = f", record {q['record']} by {q['node']}" if "record" in q else ""
            print(f"  {q['id']}: {q['code']} from kiosk {q['device'] or '-'} batch "
                  f"{q['batch']}{write}: {q['reason']}")
    elif args.quarantine_command == "release":
        print(quarantine.release(hub.store, args.id, force=args.force,
                                 max_ahead_ms=int(_seconds(args.max_ahead, "--max-ahead") * 1000)))
    else:
        print(quarantine.drop(hub.store, args.id))


def _technician_parsers(hs: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    from protocol.sync.credential import ACTIONS

    tech = hs.add_parser("technician", help="issue and revoke technicians' credentials",
                         description="Technicians' credentials: a key and a hub-signed "
                         "certificate, scoped to sites or kiosks, valid at most 7 days.")
    ts = tech.add_subparsers(dest="technician_command", metavar="TECHNICIAN_COMMAND",
                             required=True)
    p = ts.add_parser("issue", help="make a technician's key and certificate",
                      description="Make a technician's key and a certificate signed by the "
                      "hub, and write both (with the revocation list of the day) to FILE, "
                      "readable by its owner only. Kiosks check it offline.")
    _data(p)
    p.add_argument("--name", required=True, help="the technician's name")
    p.add_argument("--sites", default="", metavar="SITE[,SITE]",
                   help="the sites whose kiosks it opens")
    p.add_argument("--kiosks", default="", metavar="ID[,ID]",
                   help="kiosk ids it opens, besides its sites' (haven hub status lists them)")
    p.add_argument("--hours", type=float, default=24.0, metavar="H",
                   help="validity in hours from now (default 24, at most 168: 7 days)")
    p.add_argument("--actions", default=",".join(ACTIONS), metavar="ACTION[,ACTION]",
                   help=f"what it allows, of {', '.join(ACTIONS)} (default: all)")
    p.add_argument("--out", type=Path, required=True, metavar="FILE",
                   help="where to write the credential (must not exist)")
    p = ts.add_parser("revoke", help="revoke a technician's certificate",
                      description="Revoke a certificate by its serial. The signed revocation "
                      "list reaches kiosks at their next sync and with technicians' tools.")
    _data(p)
    p.add_argument("serial", type=int, metavar="SERIAL",
                   help="the certificate's serial (haven hub technician list)")
    p = ts.add_parser("list", help="list the certificates issued",
                      description="List every technician certificate issued: serial, name, "
                      "scope, validity, and whether it was revoked.")
    _data(p)
    p.add_argument("--json", action="store_true", help="print them as JSON")
    p = ts.add_parser("time", help="sign the hub's time over a kiosk's nonce",
                      description="Sign the hub's time over NONCE (a kiosk's, in hex), for a "
                      "kiosk with no better clock; writes the statement to FILE.")
    _data(p)
    p.add_argument("nonce", metavar="NONCE", help="the kiosk's nonce, in hex")
    p.add_argument("--out", type=Path, required=True, metavar="FILE",
                   help="where to write the signed time")


def _technician(hub: Hub, args: argparse.Namespace) -> None:
    from host.hub import technician
    from protocol.driver.secret_files import write_secret

    cmd = args.technician_command
    if cmd == "issue":
        if args.out.exists():
            raise UsageError(f"{args.out} exists; not overwriting a credential")
        serial, doc = technician.issue(
            hub, name=args.name, sites=_items(args.sites), kiosks=_items(args.kiosks),
            hours=args.hours, actions=_items(args.actions))
        try:
            write_secret(args.out, doc)
        except OSError as exc:
            raise UsageError(f"cannot write {args.out}: {exc.strerror} (certificate {serial} "
                             "is recorded: revoke it, and issue again)") from None
        print(f"technician certificate {serial} for {args.name!r} written to {args.out}")
    elif cmd == "revoke":
        technician.revoke(hub, args.serial)
        print(f"technician certificate {args.serial} revoked")
    elif cmd == "list":
        rows = technician.listing(hub)
        if args.json:
            print(json.dumps(rows, sort_keys=True, indent=1))
            return
        print(f"{len(rows)} technician certificates")
        for r in rows:
            until = time.strftime("%Y-%m-%d %H:%M", time.gmtime(r["expires"] / 1000))
            scope = ",".join(r["sites"] + r["kiosks"])
            print(f"  {r['serial']} {r['name']!r} {scope} until {until}Z "
                  f"{','.join(r['actions'])}" + ("  REVOKED" if r["revoked_at"] else ""))
    elif cmd == "time":
        try:
            nonce = bytes.fromhex(args.nonce)
        except ValueError:
            raise UsageError(f"{args.nonce!r} is not hex") from None
        try:
            args.out.write_bytes(technician.sign_time(hub, nonce))
        except OSError as exc:
            raise UsageError(f"cannot write {args.out}: {exc.strerror}") from None
        print(f"signed time written to {args.out}")


def _items(text: str) -> list[str]:
    return [x.strip() for x in text.split(",") if x.strip()]


#: ``haven hub serve``'s bounds: (flag, Limits field, type, metavar, help).
SERVE_LIMITS = [
    ("--max-connections", "max_connections", int, "N",
     "TCP connections at once; kept below the descriptor limit minus --fd-reserve"),
    ("--max-unauthenticated-per-address", "max_unauthenticated_per_address", int, "N",
     "connections from one address that have not authenticated yet (authenticated "
     "sessions are never capped by address: kiosks share a NAT)"),
    ("--handshake-rate", "handshake_rate", float, "PER_S",
     "key exchanges a second the hub does, sustained (beyond it first messages are dropped)"),
    ("--handshake-burst", "handshake_burst", int, "N", "key exchanges at once"),
    ("--handshake-reserved-rate", "handshake_reserved_rate", float, "PER_S",
     "key exchanges a second kept for addresses a kiosk was accepted from lately, on top "
     "of --handshake-rate, which strangers cannot use up"),
    ("--handshake-reserved-burst", "handshake_reserved_burst", int, "N",
     "of which at once"),
    ("--handshake-address-rate", "handshake_address_rate", float, "PER_S",
     "key exchanges a second one source address may take (an IPv6 one: its /64), "
     "a kiosk's known address too"),
    ("--handshake-address-burst", "handshake_address_burst", int, "N", "of which at once"),
    ("--known-addresses", "known_addresses", int, "N",
     "addresses a kiosk was accepted from that the hub remembers (least recently seen "
     "forgotten first)"),
    ("--known-address-age", "known_address_age", float, "S",
     "seconds an address stays known after a kiosk's last accepted hello or session end "
     "from it"),
    ("--handshake-deadline", "handshake_deadline", float, "S",
     "seconds from connect for a peer to authenticate, whatever it sends"),
    ("--idle-limit", "idle_limit", float, "S",
     "end an authenticated TCP session silent this long (the kiosk pings; the hub never "
     "pings first)"),
    ("--input-cap", "input_cap", int, "BYTES",
     "message bytes waiting for the store per connection before reading pauses"),
    ("--output-cap", "output_cap", int, "BYTES",
     "bytes queued for one peer; a peer that does not read is dropped past it"),
    ("--workers", "workers", int, "N", "threads doing the store's work"),
    ("--watch-interval", "watch_interval", float, "S",
     "seconds between looks at the store (push, revocation)"),
    ("--watch-backstop", "watch_backstop", float, "S",
     "on PostgreSQL, which notifies the store's changes: seconds between looks when "
     "none was notified"),
    ("--log-interval", "log_interval", float, "S",
     "at most one log row per refusal reason per interval, with a count"),
    ("--promote-interval", "promote_interval", float, "S",
     "seconds between passes that make check-ins' claims patients' records where none "
     "exists, as haven hub promote does (0: none)"),
    ("--fd-reserve", "fd_reserve", int, "N",
     "descriptors kept back from connections for the store and documents"),
    ("--max-rounds", "max_rounds", int, "N",
     "sync rounds served at once; a kiosk starting one more is told busy, to come back "
     "when the rounds ahead have drained (default here: 16 a processor, 64 to 256)"),
    ("--round-quiet", "round_quiet", float, "S",
     "seconds without a kiosk's message or store work that end its round"),
    ("--busy-retry-min", "busy_retry_min", float, "S",
     "the least a busy answer asks a kiosk to wait"),
    ("--busy-retry-max", "busy_retry_max", float, "S",
     "the most a busy answer asks a kiosk to wait"),
    ("--busy-hold", "busy_hold", float, "S",
     "seconds a round's first message may wait for a place, when one is that close, "
     "before its kiosk is told busy (0: told at once)"),
    ("--round-guess", "round_guess", float, "S",
     "seconds a sync round is taken to last until the hub has measured some (the busy "
     "answers' waits follow the rounds' mean time)"),
]


def _serve_limits(p: argparse.ArgumentParser) -> None:
    from host.hub.limits import Limits

    defaults = Limits()
    for flag, name, kind, metavar, text in SERVE_LIMITS:
        default = getattr(defaults, name)
        p.add_argument(flag, dest=name, type=kind, default=default, metavar=metavar,
                       help=f"{text} (default {default:g})" if kind is float
                       else f"{text} (default {default})")


def serve_limits(args: argparse.Namespace) -> Limits:
    from host.hub.limits import Limits

    values = {name: getattr(args, name) for _, name, *_ in SERVE_LIMITS}
    for flag, name, *_ in SERVE_LIMITS:
        if values[name] < 0 or (values[name] == 0
                                and name not in ("fd_reserve", "promote_interval",
                                                 "busy_hold")):
            raise UsageError(f"{flag} must be above 0")
    if values["busy_retry_min"] > values["busy_retry_max"]:
        raise UsageError("--busy-retry-min must not be above --busy-retry-max")
    return Limits(**values)


def _approve(hub: Hub, args: argparse.Namespace) -> None:
    from protocol.sync import approval

    _window_needs_role(args)
    docs = hub.approve(args.site, args.count, args.hours, role=args.role,
                       window_days=args.window)
    try:
        args.out.write_bytes(approval.dump_file(docs))
    except OSError as exc:
        raise UsageError(f"cannot write {args.out}: {exc.strerror} (the approvals are "
                         "reserved until they expire: run this again with another --out)"
                         ) from None
    print(f"{len(docs)} approvals for site {args.site!r} written to {args.out}:")
    for doc in docs:
        a = approval.read_approval(doc, hub.ed_public)
        print(f"  approval {a.serial}: kiosk {a.device_id}, letter {a.letter}, "
              f"number {a.kiosk_number}")


def run(args: argparse.Namespace) -> int:
    from host.hub import backup_commands
    from host.hub.hub import X_KEY, Hub, has_database, init_hub

    if args.command == "hub" and args.hub_command == "init":
        print(f"hub ready in {args.data}; public key "
              f"{init_hub(args.data, args.key_provider, args.tpm_tcti, args.db)}")
        return 0
    if args.command == "hub" and backup_commands.handles(args):
        return backup_commands.run(args)
    if (args.data / X_KEY).exists() and not has_database(args.data):
        # keys restored first: opening the hub would make an empty database there,
        # which haven hub restore then refuses to overwrite
        raise UsageError(f"{args.data} holds a hub's keys but no database: bring its data "
                         f"back first (haven hub restore --from BACKUP --data {args.data})")
    if args.command == "hub" and args.hub_command == "serve":
        from host.hub.serve import serve

        with Hub(args.data) as hub:
            try:
                serve(hub, listen=args.listen, serial=args.serial, baud=args.baud,
                      max_ahead_ms=int(args.max_ahead * 1000), limits=serve_limits(args),
                      reuse_port=args.reuse_port, ready=lambda line: print(line, flush=True))
            except KeyboardInterrupt:
                print("stopping", file=sys.stderr)
        return 0
    with Hub(args.data) as hub:
        if args.command == "review":
            return _review(hub, args)
        cmd = args.hub_command
        if cmd == "enroll":
            try:
                request = args.request.read_bytes()
            except OSError as exc:
                raise UsageError(f"cannot read {args.request}: {exc.strerror}") from None
            if args.from_day is not None and args.replaces is None:
                raise UsageError("--from goes with --replaces")
            _window_needs_role(args)
            _write_cert(args.out, hub.enroll(request, replaces=args.replaces,
                                             from_day=args.from_day, role=args.role,
                                             window_days=args.window), args.replaces)
        elif cmd == "role":
            _still_served(hub, args.device, "a role")
            print(hub.set_role(args.device, args.role, _days(args.window)))
        elif cmd == "decommission":
            _still_served(hub, args.device, "decommissioning it")
            hub.decommission(args.device)
            print(f"kiosk {args.device} decommissioned: it holds no stable point back; "
                  "whatever it still sends is quarantined")
        elif cmd == "replace":
            from host.hub.replace import replace

            _write_cert(args.out, replace(hub, args.old, args.by, args.from_day), args.old)
        elif cmd == "approve":
            _approve(hub, args)
        elif cmd == "revoke":
            hub.revoke(args.device)
            print(f"kiosk {args.device} revoked")
        elif cmd == "export":
            from host.hub.fhir import export

            manifest = export(hub, args.fhir, args.since, args.patient_system,
                              args.document_url)
            for item in manifest["output"] + manifest["deleted"]:
                print(f"{item['count']:8d} {item['type']} ({item['url']})")
            print(f"written to {args.fhir}; next time: --since "
                  f"{manifest['extension']['cursor']}")
        elif cmd == "dump":
            data = hub.dump()
            sys.stdout.flush()
            sys.stdout.buffer.write(data)
            sys.stdout.buffer.flush()
        elif cmd == "history":
            _history(hub.history(args.record), args.json)
        elif cmd == "audit":
            return _audit(hub, args.kiosk, args.json)
        elif cmd == "alerts":
            return _alerts(hub, args.json)
        elif cmd == "status":
            _status(hub, args.json, _server_status(args.data))
        elif cmd == "held":
            _held(hub, args.json)
        elif cmd == "keys" and args.keys_command == "rotate":
            version = hub.rotate_key()
            print(f"data key {version} seals from now on; a running haven hub serve re-seals "
                  "the rest in the background")
        elif cmd == "keys" and args.keys_command == "rotate-fleet":
            _rotate_fleet(hub, args)
        elif cmd == "erase":
            _erase(hub, args)
        elif cmd == "promote":
            done = hub.promote_claims()
            if args.json:
                print(json.dumps(done, sort_keys=True))
            else:
                print(f"{len(done)} check-in identities settled")
                for d in done:
                    print(f"  {d['checkin']} " + (
                        f"patient {d['patient']}: {d['identity']}" if "identity" in d
                        else f"patient {d['patient']}: completed from its sealed {d['completed']}"
                        if "completed" in d else f"left as it is: {d['error']}"))
        elif cmd == "relay":
            return _relay(hub, args.directory)
        elif cmd == "technician":
            _technician(hub, args)
        elif cmd == "quarantine":
            _quarantine(hub, args)
        elif cmd == "clear-clone":
            hub.clear_clone(args.device)
            print(f"kiosk {args.device}: suspected-clone flag cleared")
    return 0


def _relay(hub: Hub, directory: Path) -> int:
    from host.hub.relay import import_dir

    got = import_dir(hub, directory)
    for line in got.problems:
        print(f"haven hub relay import: {line}", file=sys.stderr)
    print(f"{got.bundles} bundle(s) applied ({got.batches} batches); {len(got.answers)} "
          f"answer file(s) written, {got.bytes} B ({got.padding} B of padding); "
          f"{got.others} answer(s) still for kiosks on the stick")
    return 3 if got.problems else 0


def _erase(hub: Hub, args: argparse.Namespace) -> None:
    from host.hub.erasure import live_id, patient_of

    pid = patient_of(hub.fleet, args.patient, args.passport, args.code)
    if args.patient is None:  # a passport or code: the patient may have come back since
        pid = live_id(hub.store, hub.fleet, pid)
    done = hub.erase(pid, args.by, args.reason)
    records = f"{done.deleted} record{'' if done.deleted == 1 else 's'}"
    if done.already:
        print(f"patient {done.patient} was erased already ({done.record}); {records} "
              "written since deleted again")
    else:
        print(f"patient {done.patient} erased: {records} deleted, their values purged "
              "here; kiosks erase at their next sync")
    if not done.emptied:
        print("the write-ahead log (hub.db-wal) could not be emptied: a reader held it; run "
              "this again when the hub is quieter (it is emptied then)", file=sys.stderr)
    print("keep this receipt; after restoring a backup older than it, run it again:")
    print(f"  {done.line}")


def _status(hub: Hub, as_json: bool, server: dict[str, Any]) -> None:
    st = hub.status()
    st.update(server)
    if as_json:
        print(json.dumps(st, sort_keys=True, indent=1))
        return
    print(f"hub {st['node']}  key {st['public_key']}  deltas {st['deltas']}")
    print(f"kiosks: {len(st['kiosks'])}")
    for k in st["kiosks"]:
        role = k["role"] + (f" {k['window_days']} days" if k["window_days"] else "")
        print(f"  {k['device']} {k['site']!r} {k['letter']} number {k['kiosk_number']} "
              f"{k['state']}  {role}  acked cursor {k['acked_cursor']}  last seen "
              f"{k['last_seen'] or 'never'}  last batch {k['last_batch']}  backlog "
              f"{k['backlog_deltas']} deltas"
              + ("  SUSPECTED-CLONE" if k["suspected_clone"] else "")
              + (f"  replaced by {r['by']} from {r['from_day']}"
                 if (r := k.get("replaced")) else "")
              + (f"  fleet key generation {k['fleet_generation']} (the hub's: "
                 f"{fleet['generation']})" if (fleet := st["fleet_rotation"]) else ""))
    print(f"stable points: {len(st['stable_points'])}")
    for g in st["stable_points"]:
        where = "every site" if g["site"] == "*" else repr(g["site"])
        by = g["reached_hub_by"]
        print(f"  {g['role']} at {where}: cursor {g['cursor']}"
              + (f" (every kiosk of it holds what reached the hub by {by})" if by else ""))
    print(f"conflicts: {len(st['conflicts'])} ({st['conflicts_held']} held)")
    for c in st["conflicts"]:
        print(f"  {c['id']} {c['class']} {c['severity']} record {c['record_id']}")
    print(f"quarantine: {len(st['quarantine'])}")
    for q in st["quarantine"]:
        print(f"  {q['id']}: {q['at']} kiosk {q['device']} batch {q['batch']}: {q['code']}")
    docs = st["documents"]
    print(f"documents: {docs['documents']} held, {docs['bytes']} bytes")
    keys = st["keys"]
    print(f"data keys: {', '.join(map(str, keys['versions']))} (current {keys['current']})"
          + (f"; re-sealing: {keys['resealing']}" if keys["resealing"] else ""))
    if (fleet := st["fleet_rotation"]) is not None:
        print(f"fleet key: generation {fleet['generation']}, {fleet['patients']} patients "
              f"migrated" + ("" if fleet["done"] else " so far (migration under way)"))
    servers = st.get("servers")
    for srv in servers or [st.get("server")]:
        line = _server_line({"server": srv})
        print(line.replace("server:", f"server (pid {srv['pid']}):", 1) if servers else line)
    held = st["held_batches"]
    print(f"held batches: {len(held)} (haven hub held lists what they carry)")
    for b in held:
        print(f"  kiosk {b['device']} branch {b['branch']} batch {b['seq']}: "
              f"{len(b['writes'])} writes")
    from host.hub.alerts import lines

    print(f"alerts: {len(st['alerts'])} (haven hub alerts)")
    for line in lines(st["alerts"]):
        print(f"  {line}")


def _history(writes: list[dict[str, Any]], as_json: bool) -> None:
    if as_json:
        print(json.dumps(writes, sort_keys=True, indent=1))
        return
    for w in writes:
        at = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(w["at_ms"] / 1000))
        what = "delete" if w["delete"] else json.dumps(
            {**w["fields"], **{f"{k}+": v for k, v in w["add"].items()},
             **{f"{k}-": v for k, v in w["remove"].items()}}, sort_keys=True)
        print(f"{at}.{w['at_ms'] % 1000:03d}Z {w['by']}: {w['type']} {what}")


def _audit(hub: Hub, device_id: str | None, as_json: bool) -> int:
    from host.hub import audit

    kiosks = audit.report(hub.store, device_id)
    if as_json:
        print(json.dumps({"kiosks": kiosks}, sort_keys=True, indent=1))
    elif not kiosks:
        print("no kiosks enrolled")
    for k in [] if as_json else kiosks:
        trouble = audit.problems(k)
        print(f"kiosk {k['device']} {k['site']!r} {k['letter']}: {len(k['entries'])} entries, "
              + ("  ".join(trouble) if trouble else "chain verified"))
        for e in k["entries"]:
            at = (time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(e["time"] / 1000)) + "Z"
                  if "time" in e else "?")
            detail = f" {json.dumps(e['detail'], sort_keys=True)}" if e.get("detail") else ""
            flag = "" if e["status"] == "verified" else f"  <- {e['status'].upper()}"
            print(f"  #{e['seq']} {at} {e.get('who', '?')}: {e.get('what', '?')} "
                  f"{e.get('result', '?')}{detail}{flag}")
    return 0 if all(k["ok"] for k in kiosks) else 1


def _alerts(hub: Hub, as_json: bool) -> int:
    from host.hub import alerts

    found = alerts.alerts(hub)
    if as_json:
        print(json.dumps({"alerts": found}, sort_keys=True, indent=1))
    else:
        print(f"{len(found)} alerts" if found else "no alerts")
        for line in alerts.lines(found):
            print(line)
    return 1 if found else 0


def _held(hub: Hub, as_json: bool) -> None:
    held = hub.held_batches()
    if as_json:
        print(json.dumps(held, sort_keys=True, indent=1))
        return
    print(f"{len(held)} held batches")
    for b in held:
        print(f"kiosk {b['device']} branch {b['branch']} batch {b['seq']} received "
              f"{b['received_at']}")
        for w in b["writes"]:
            if "error" in w:
                print(f"  unreadable: {w['error']}")
                continue
            what = "delete" if w["delete"] else json.dumps(w["fields"], sort_keys=True)
            print(f"  {w['type']} {w['record']}: {what}")


def _review(hub: Hub, args: argparse.Namespace) -> int:
    if args.review_command == "list":
        conflicts = hub.conflicts()
        if args.json:
            print(json.dumps(conflicts, sort_keys=True, indent=1))
            return 0
        print(f"{len(conflicts)} conflicts")
        for c in conflicts:
            print(f"{c['id']} {c['class']} {c['severity']} record {c['record_id']}"
                  + (f" field {c['field']}" if c["field"] else ""))
            for v in c["versions"]:
                print(f"  version {v['id']}: {json.dumps(v['fields'], sort_keys=True)}")
        return 0
    print(hub.resolve(args.conflict, keep=args.keep, assignments=args.set))
    return 0


def _server_status(data: Path) -> dict[str, Any]:
    """The running server's health (its unix socket), or null with a note."""
    from host.hub.health import SOCKET, read_all

    reports = read_all(data)
    if not reports:
        return {"server": None,
                "server_note": f"no haven hub serve answers on {data / SOCKET}"}
    for report in reports:
        report["uptime_s"] = report.pop("uptime", None)
    # several processes sharing a port: each one's report ("server": the first)
    return {"server": reports[0], **({"servers": reports} if len(reports) > 1 else {})}


def _server_line(st: dict[str, Any]) -> str:
    srv = st.get("server")
    if not srv:
        return "server: not running"
    conns, fds = srv["connections"], srv["descriptors"]
    tcp, serial = conns["tcp"], conns["serial"]
    refused = sum(srv["refusals"].values())
    ports = sum(serial.values())
    rounds = srv.get("rounds") or {}
    busy = (f"sync rounds {rounds['in_progress']}/{rounds['bound']}, {rounds['busy']} told "
            f"busy; " if rounds else "")
    return (f"server: {conns['total']} connections ({tcp['authenticated']} tcp sessions, "
            f"{tcp['handshaking']} handshaking; {ports} serial ports, "
            f"{serial['authenticated']} in session); "
            f"descriptors {fds['in_use']}/{fds['limit']}; {busy}{refused} refused; "
            f"up {srv['uptime_s'] / 3600:.1f} h")
