"""The hub's data at rest: sealed, upgraded, rotated (``host.hub.at_rest``).

No hub file (``hub.db``, its ``-wal`` and ``-shm``, the documents) holds a
patient value or a document's bytes in the clear; a hub of an older release
is sealed by the re-sealer; a rotation cut short by a kill loses nothing.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from device.sync.document_store import attach
from host.cli import main as haven_main
from host.errors import UsageError
from host.hub.at_rest import STORE_KEY, SealBroken
from host.hub.hub import Hub, init_hub
from host.hub.serve import Server
from host.hub.storage import Op
from protocol.crdt.clock import pack
from protocol.crdt.delta import Delta, encode
from protocol.crdt.replica import Replica
from protocol.crdt.schema import PATIENT
from protocol.errors import RemoteProtocolError
from protocol.sync import batches as sync
from protocol.sync.batches import Batch
from protocol.sync.checks import check_remote_deltas
from tests.hub_db import hub_db

from .swtpm_helpers import soft_tpm
from .test_documents import content
from .test_sync_helpers import Kiosk, served_hub

FIXTURE = Path(__file__).parent / "fixtures" / "release-a84fa97"
SECRETS = ["Zebulon Quixotic-Farnsworth", "QX7731904", "Periwinkle Mansions",
           "Xanthoxylum cordifolium 40mg", "twice daily with food, Ozymandias"]
pytestmark = pytest.mark.usefixtures("hub_backend")


def files_under(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file()]


def assert_nothing_plain(root: Path, needles: list[bytes]) -> None:
    files = files_under(root)
    assert files
    for path in files:
        blob = path.read_bytes()
        for needle in needles:
            assert needle not in blob, f"{needle[:40]!r} in {path.relative_to(root)}"


def windows(data: bytes, size: int = 48, count: int = 16) -> list[bytes]:
    """Pieces of ``data`` from one end to the other."""
    step = max(1, (len(data) - size) // count)
    return [data[i:i + size] for i in range(0, len(data) - size, step)]


@pytest.mark.sqlite_only  # the SQLite file's bytes
def test_nothing_distinctive_in_any_hub_file(tmp_path: Path) -> None:
    name, passport, address, medication, dosage = SECRETS
    scan = content(150_000, seed=7)
    with served_hub(tmp_path) as (hub, url):
        a, b = Kiosk(tmp_path, "a", hub, "A"), Kiosk(tmp_path, "b", hub, "B")
        try:
            r = a.store.checkin(name=name, passport=passport, reason="tremor")
            a.store.put("patient", r.patient_id, {"address": address})
            a.store.put("prescription", values={"subject": r.patient_id,
                                                "medication": medication,
                                                "dosageInstruction": dosage})
            (tmp_path / "scan.png").write_bytes(scan)
            doc = attach(a.store, tmp_path / "scan.png", patient=r.patient_id, title="Scan")
            b.store.checkin(name="Ottoline Brackenbury", passport="QX5550123")
            for kiosk in (a, b, a, b):
                kiosk.sync(url)
            # a held batch and a quarantined delta carry patient values too
            payload = sync.pack([Replica(7).put(uuid.uuid4().bytes, "patient", 1,
                                                {"name": "Held Heliotrope-Vance"})])
            hub.store.hold_batch(a.device, Batch(9, b"\x01" * 32, payload, b"\0" * 64), 1)
            hub.store.commit_batch("0000beef", 1, b"\x02" * 32, [],
                                   [("bad-field", "test", b"Quarantined Quennell")], 1, [0])
            assert hub.document(doc.record_id) == scan
            dump = hub.dump()
            assert name.encode() in dump and medication.encode() in dump
            assert [h["writes"] for h in hub.held_batches()][0][0]["fields"]["name"] == \
                "Held Heliotrope-Vance"
            assert hub.store.quarantined_delta(1) is not None
            needles = [s.encode() for s in [*SECRETS, "Ottoline", "Brackenbury",
                                             "Heliotrope", "Quennell", "Zebulon"]]
            needles += [scan[:20], *windows(scan)]
            assert (hub.data / "hub.db-wal").stat().st_size > 0
            assert_nothing_plain(hub.data, needles)  # the log as it is
            hub.store.checkpoint()
            assert_nothing_plain(hub.data, needles)
            assert not list((hub.data / "documents").glob("*" + doc.record_id[:8] + "*"))
        finally:
            a.close()
            b.close()


def test_a_quarantined_deltas_reason_in_the_clear_names_no_patient_value(
        tmp_path: Path) -> None:
    """A value that misfits its field is quarantined; the reason kept beside the sealed
    delta says which field and why, never the value."""
    init_hub(tmp_path / "hub")
    now = int(time.time() * 1000)
    birth = PATIENT.field("birthDate").number
    misfit = encode(Delta(os.urandom(16), PATIENT.number, 7, pack(now),
                          set={birth: "born 1971 as Zebulon Quixotic"}))
    got, = check_remote_deltas([misfit], now, node=7, max_ahead_ms=60_000)
    assert isinstance(got, RemoteProtocolError) and "birthDate" in str(got)
    with Hub(tmp_path / "hub") as hub:  # as the hub's round keeps it
        hub.store.commit_batch("0000beef", 1, b"\x02" * 32, [],
                               [(got.code, str(got), misfit)], now, [0])
        hub.store.checkpoint()
        assert_nothing_plain(hub.data, [b"Zebulon", b"born 1971"])


def fixture_hub(tmp_path: Path) -> Path:
    root = tmp_path / "hub"
    shutil.copytree(FIXTURE / "hub", root)
    for path in [root, *root.rglob("*")]:  # git keeps no modes: keys must be owner-only
        path.chmod(0o700 if path.is_dir() else 0o600)
    return root


@pytest.mark.sqlite_only  # the SQLite file's bytes
def test_an_older_hub_is_readable_at_once_and_sealed_by_the_resealer(tmp_path: Path) -> None:
    root = fixture_hub(tmp_path)
    want = json.loads((FIXTURE / "expected.json").read_text())["hub"]
    document = (root / want["document_file"]).read_bytes()
    rid = want["document_file"].split("/", 1)[1]
    plain = [bytes.fromhex(op[3]) for op in want["ops"]]
    # a quarantined delta and a held batch as that release kept them: plain
    quarantined = b"Quarantined before sealing: Philippa Quartermaine"
    held = sync.pack([Replica(7).put(uuid.uuid4().bytes, "patient", 1,
                                     {"name": "Held Heliotrope-Vance"})])
    conn = sqlite3.connect(root / "hub.db")
    with conn:
        conn.execute("INSERT INTO quarantine (at, device_id, seq, code, reason, data)"
                      " VALUES (1, '92b5006d', 3, 'bad-field', 'test', ?)", [quarantined])
        conn.execute("INSERT INTO held_batches VALUES ('92b5006d', 1, 9, ?, ?, ?, ?, 1)",
                     [b"\x01" * 32, b"\x02" * 32, held, b"\0" * 64])
    conn.close()
    assert not (root / STORE_KEY).exists()
    (root / "documents").chmod(0o755)  # as that release made it: any user could list it
    with Hub(root) as hub:
        assert (root / "documents").stat().st_mode & 0o777 == 0o700  # owner-only at open
        assert hub.store.quarantined_delta(1) == ("92b5006d", "bad-field", quarantined)
        assert (root / STORE_KEY).exists()  # made at the first open of the new code
        ops = sorted([op.rid.hex(), op.stamp, op.node, op.data.hex()]
                     for op in hub.store.all_ops())
        assert ops == sorted(want["ops"])
        dump = hub.dump()
        assert hub.store.keyring()["resealing"] == "ops 0"
        for _ in range(100):  # a few rows a slice: many slices
            if not hub.reseal_slice(3):
                break
        else:
            pytest.fail("the re-sealer never finished")
        assert hub.store.keyring() == {"versions": [1], "current": 1, "resealing": None}
        assert sorted([op.rid.hex(), op.stamp, op.node, op.data.hex()]
                      for op in hub.store.all_ops()) == ops
        assert hub.dump() == dump
        assert hub.document(rid) == document
        assert hub.status()["documents"] == {"documents": 1, "bytes": len(document)}
        assert hub.store.quarantined_delta(1) == ("92b5006d", "bad-field", quarantined)
        assert hub.store.held_batches()[0]["payload"] == held
    assert not (root / "documents" / rid).exists()
    assert {p.stat().st_mode & 0o777 for p in (root / "documents").rglob("*")
            if p.is_dir()} == {0o700}
    assert_nothing_plain(root, [p for p in plain if len(p) > 24] + windows(document)
                         + [b"Philippa", b"Heliotrope"])


def test_a_key_file_of_another_hub_or_none_is_refused_clearly(tmp_path: Path) -> None:
    init_hub(tmp_path / "hub")
    key = tmp_path / "hub" / STORE_KEY
    key.unlink()
    with pytest.raises(UsageError, match="store key"):
        Hub(tmp_path / "hub")
    assert not key.exists()  # never made anew over a keyring it would not open
    key.write_bytes(os.urandom(32))
    key.chmod(0o600)
    with pytest.raises(UsageError, match="does not open its keyring"):
        Hub(tmp_path / "hub")


def many_ops(hub: Hub, count: int) -> None:
    writer = Replica(5)
    deltas = [writer.put(uuid.uuid4().bytes, "patient", 1_000 + i, {"name": f"Patient {i}"})
              for i in range(count)]
    hub.store.add_local(*map(_decoded, deltas))


def _decoded(data: bytes) -> Op:
    from protocol.crdt.delta import decode
    d = decode(data)
    return Op(d.record_id, d.stamp, d.node, data)


RESEAL_FOREVER = """
import sys
from host.hub.hub import Hub
hub = Hub(sys.argv[1])
while hub.reseal_slice(5):
    print(hub.store.keyring()["resealing"], flush=True)
print("done", flush=True)
"""


def test_a_rotation_killed_midway_loses_nothing_and_finishes_later(tmp_path: Path) -> None:
    init_hub(tmp_path / "hub")
    with Hub(tmp_path / "hub") as hub:
        many_ops(hub, 120)
        assert not all(hub.reseal_slice() for _ in range(1000))  # sealed, well before 1000
        before = hub.dump()
        assert hub.rotate_key() == 2
        assert hub.store.keyring()["versions"] == [1, 2]
    child = subprocess.Popen([sys.executable, "-c", RESEAL_FOREVER, str(tmp_path / "hub")],
                             stdout=subprocess.PIPE, text=True, cwd=Path(__file__).parent.parent)
    assert child.stdout is not None
    seen = [child.stdout.readline() for _ in range(3)]
    child.send_signal(signal.SIGKILL)
    child.wait(10)
    assert all(line.startswith("ops ") for line in seen), seen
    with Hub(tmp_path / "hub") as hub:
        keys = hub.store.keyring()
        assert keys["versions"] == [1, 2] and keys["resealing"] is not None  # both kept
        assert hub.dump() == before  # rows of either key read
        assert hub.rotate_key() == 3  # a rotation meanwhile starts the walk over
        for _ in range(100):
            if not hub.reseal_slice(50):
                break
        assert hub.store.keyring() == {"versions": [3], "current": 3, "resealing": None}
        assert hub.dump() == before
        versions = {bytes(d)[0] for (d,) in hub.store._q("SELECT data FROM ops")}
        assert versions == {3}


def test_keys_rotate_while_the_hub_serves_kiosks(tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(Server, "RESEAL_IDLE", 0.1)
    with served_hub(tmp_path) as (hub, url):
        kiosk = Kiosk(tmp_path, "k", hub, "A")
        try:
            for i in range(5):
                kiosk.store.checkin(name=f"Before Rotation {i}", passport=f"QB{i:07d}")
            kiosk.sync(url)
            assert haven_main(["hub", "keys", "rotate", "--data", str(hub.data)]) == 0
            assert "data key 2" in capsys.readouterr().out
            deadline = time.monotonic() + 20
            i = 0
            while hub.store.keyring()["versions"] != [2]:
                assert time.monotonic() < deadline, hub.store.keyring()
                kiosk.store.checkin(name=f"During Rotation {i}", passport=f"QD{i:07d}")
                kiosk.sync(url)
                i += 1
            kiosk.sync(url)
            assert hub.dump() == kiosk.store.dump()
            assert hub.store.count() == len(list(hub.store.all_ops()))
        finally:
            kiosk.close()


def alter(hub: Hub, sql: str, args: list[Any]) -> None:
    """Change the hub's database behind its back."""
    with hub_db(hub.data) as db:
        db.execute(sql, args)


def test_a_sealed_value_altered_or_moved_does_not_open(tmp_path: Path) -> None:
    init_hub(tmp_path / "hub")
    with Hub(tmp_path / "hub") as hub:
        many_ops(hub, 2)
        (a, da), (b, db) = hub.store._q("SELECT hseq, data FROM ops ORDER BY hseq")
        alter(hub, "UPDATE ops SET data = ? WHERE hseq = ?", [db, a])  # moved
        with pytest.raises(SealBroken, match="does not open"):
            list(hub.store.all_ops())
        flipped = bytearray(da)
        flipped[-1] ^= 1
        alter(hub, "UPDATE ops SET data = ? WHERE hseq = ?", [bytes(flipped), a])
        with pytest.raises(SealBroken):
            list(hub.store.all_ops())
        alter(hub, "UPDATE ops SET data = ? WHERE hseq = ?", [da, a])
        assert b"Patient 0" in b"".join(op.data for op in hub.store.all_ops())
        # the current records' values (what dump reads): moved to another record or
        # field, or altered, they do not open either
        (a, va), (b, vb) = hub.store._q("SELECT id, value FROM record_fields WHERE kind = 0"
                                        " ORDER BY rid, field LIMIT 2")
        alter(hub, "UPDATE record_fields SET value = ? WHERE id = ?", [vb, a])
        with pytest.raises(SealBroken):
            hub.dump()
        alter(hub, "UPDATE record_fields SET value = ? WHERE id = ?", [va[:-1], a])
        with pytest.raises(SealBroken):
            hub.dump()
        alter(hub, "UPDATE record_fields SET value = ? WHERE id = ?", [va, a])
        assert b"Patient 0" in hub.dump()


def test_a_hub_whose_store_key_is_sealed_to_a_tpm(tmp_path: Path) -> None:
    with soft_tpm(tmp_path / "tpm") as tpm:
        assert haven_main(["hub", "init", "--data", str(tmp_path / "hub"), "--key-provider",
                           "tpm", "--tpm-tcti", tpm.tcti]) == 0
        assert (tmp_path / "hub" / "hub_store.tpm").exists()
        assert not (tmp_path / "hub" / STORE_KEY).exists()
        with Hub(tmp_path / "hub") as hub:
            many_ops(hub, 3)
            dump = hub.dump()
        with Hub(tmp_path / "hub") as hub:  # the key unsealed again
            assert hub.dump() == dump and b"Patient 2" in dump
        tpm.reset()  # cleared, or another TPM: the key is gone, and said so
        with pytest.raises(UsageError, match="store key"):
            Hub(tmp_path / "hub")
