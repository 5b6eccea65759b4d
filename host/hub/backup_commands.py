"""``haven hub backup``, ``haven hub restore``, ``haven hub keys backup`` and ``keys restore``.

Thin shells over ``host.hub.backup`` and ``host.hub.key_backup``; none opens the
hub (a backup runs beside ``haven hub serve``; a restore has no hub yet). The
recovery key is read from a file or typed at a prompt, never from the command
line, where other users' ``ps`` and the shell's history would see it.
"""

from __future__ import annotations

import argparse
import getpass
import sys
from pathlib import Path

from host.errors import UsageError
from protocol.driver.secret_files import read_at_most


def _path(p: argparse.ArgumentParser, flag: str, metavar: str, text: str,
          dest: str | None = None) -> None:
    p.add_argument(flag, dest=dest or flag[2:], type=Path, required=True, metavar=metavar,
                   help=text)


def add_parsers(hs: argparse._SubParsersAction,  # type: ignore[type-arg]
                ks: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """The backup commands under ``haven hub`` (``hs``) and ``haven hub keys`` (``ks``)."""
    p = hs.add_parser("backup", help="back up the hub's data while it serves (not its keys)",
                      description="Copy the hub's database (a consistent snapshot, taken "
                      "while haven hub serve goes on), its documents and a manifest (hub "
                      "id, schema, head arrival number, time, each file's hash) to DIR, and "
                      "check the copy. The keys are not in it: haven hub keys backup.")
    _path(p, "--data", "DIR", "the hub's data directory")
    _path(p, "--to", "BACKUP_DIR", "where the backup goes: a new or empty directory")
    p.add_argument("--force", action="store_true",
                   help="replace the backup BACKUP_DIR holds")
    p = hs.add_parser("restore", help="bring a hub's data back from a backup",
                      description="Check the backup in BACKUP_DIR whole (every file's hash, "
                      "the database's integrity) and copy it into NEWDIR, which must hold no "
                      "hub data (its keys, restored first, may be there). Then restore the "
                      "keys (haven hub keys restore) and start the hub: the kiosks give "
                      "back what the backup missed.")
    _path(p, "--from", "BACKUP_DIR", "a directory haven hub backup wrote", dest="source")
    _path(p, "--data", "NEWDIR", "the new data directory")

    p = ks.add_parser("backup", help="seal the hub's keys to a new recovery key",
                      description="Write the hub's keys to FILE, sealed (AES-256-GCM) to a "
                      "new recovery key that is printed once: write it down and keep it in "
                      "a safe, apart from FILE and from the data backups.")
    _path(p, "--data", "DIR", "the hub's data directory")
    _path(p, "--to", "FILE", "where the sealed keys go (never overwritten)")
    p = ks.add_parser("restore", help="bring the hub's keys back from a key backup",
                      description="Open FILE with its recovery key (asked for, or read from "
                      "--recovery-key-file) and write the keys owner-only into DIR. A "
                      "backup of another hub than DIR's database is refused.")
    _path(p, "--from", "FILE", "a file haven hub keys backup wrote", dest="source")
    _path(p, "--data", "DIR", "the hub's data directory (restored with haven hub restore, or new)")
    p.add_argument("--recovery-key-file", type=Path, metavar="KEY_FILE",
                   help="a file holding the recovery key (default: ask for it)")
    p.add_argument("--force", action="store_true",
                   help="replace keys DIR holds already")


def handles(args: argparse.Namespace) -> bool:
    return args.hub_command in ("backup", "restore") or (
        args.hub_command == "keys" and args.keys_command in ("backup", "restore"))


def run(args: argparse.Namespace) -> int:
    from host.hub import backup, key_backup
    from host.hub.hub import ED_KEY

    if args.hub_command == "backup":
        m = backup.backup(args.data, args.to, force=args.force)
        size = sum(int(f["size"]) for f in m.files.values())
        print(f"backup of hub {m.hub_id} written to {args.to} and checked: schema "
              f"{m.schema_version}, head {m.head}, {len(m.files)} files, {size} bytes, taken "
              f"{m.created}. It holds no key: keep a key backup (haven hub keys backup) "
              "apart from it")
    elif args.hub_command == "restore":
        m = backup.restore(args.source, args.data)
        print(f"hub {m.hub_id} restored into {args.data} from the backup taken {m.created} "
              f"(head {m.head})")
        if not (args.data / ED_KEY).exists():
            print(f"next: haven hub keys restore --from KEY_BACKUP --data {args.data}")
    elif args.keys_command == "backup":
        hub_id, names, key = key_backup.backup_keys(args.data, args.to)
        print(f"keys of hub {hub_id} ({', '.join(names)}) sealed to {args.to}")
        print("recovery key (shown this once: write it down and keep it in a safe, apart "
              "from the key backup and from the data backups):")
        print(f"\n    {key}\n")
    else:
        sealed = key_backup.read_backup(args.source)
        key_backup.check_target(sealed, args.data, force=args.force)
        keys = key_backup.open_backup(sealed, _recovery_key(args.recovery_key_file))
        key_backup.check_generations(keys, args.data)
        key_backup.write_keys(keys, args.data, force=args.force)
        print(f"keys of hub {sealed.hub_id.hex()} ({', '.join(sorted(keys))}) restored "
              f"into {args.data}")
    return 0


def _recovery_key(path: Path | None) -> str:
    if path is not None:
        try:
            return read_at_most(path, 1024).decode("utf-8")
        except OSError as exc:
            raise UsageError(f"cannot read the recovery key from {path}: {exc.strerror}"
                             ) from None
        except ValueError as exc:  # UnicodeDecodeError is a ValueError
            raise UsageError(f"cannot read the recovery key from {path}: {exc}") from None
    if sys.stdin.isatty():
        return getpass.getpass("recovery key: ")
    return sys.stdin.readline(1024)
