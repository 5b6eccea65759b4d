"""Run check-ins and print each one only after it is committed (for crash tests).

    python -m tests.crash_child DATA COUNT [--no-sync] [--new-patients]

``--no-sync`` turns fsync off (synchronous=OFF), to show that the power-loss
test notices when durability is gone. ``--new-patients`` checks in patients
without documents, and prints the short code each was given.
"""

from __future__ import annotations

import sys
from pathlib import Path

import device.store.db as store_db
from device.store import Store


def main() -> None:
    data, count = Path(sys.argv[1]), int(sys.argv[2])
    if "--no-sync" in sys.argv:
        connect = store_db.connect

        def unsynced(path: Path | str, **options: bool):  # type: ignore[no-untyped-def]
            db = connect(path, **options)
            db.execute("PRAGMA synchronous = OFF")
            return db

        store_db.connect = unsynced  # type: ignore[assignment]
        import device.store.store as store_mod

        store_mod.connect = unsynced  # type: ignore[attr-defined]
    new_patients = "--new-patients" in sys.argv  # each given a short code, printed too
    with Store(data) as store:
        for i in range(count):
            r = store.checkin(name=f"Patient {i}", passport=None if new_patients
                              else f"PP{i:07d}", reason="test", now_ms=1_790_000_000_000 + i)
            print(f"done {r.record_id} {r.queue_number}" + (f" {r.code}" if new_patients
                                                            else ""), flush=True)


if __name__ == "__main__":
    main()
