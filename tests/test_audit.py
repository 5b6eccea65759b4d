"""The audit of technician actions: kiosk-signed, hash-chained entries that reach the hub
with ordinary sync rounds, where ``haven hub audit`` checks each kiosk's chain.

Kiosks and a hub over real TCP on 127.0.0.1 (``test_sync_helpers``), real SQLite on both
sides; tampering is done to the hub's database itself, as someone holding it would.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import stat
import uuid
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from device import audit
from device.audit.chain import HEAD_KEY
from host import tech_log
from host.cli import main as hub_main
from host.hub.hub import Hub
from protocol.crdt.delta import Delta, decode, encode
from protocol.crdt.schema import AUDIT
from protocol.sync import audit as chain
from protocol.sync.batches import GENESIS
from tests.hub_db import connect_hub_db

from .test_sync_helpers import Kiosk, served_hub

pytestmark = pytest.mark.usefixtures("hub_backend")

PATIENT = {"name": "Amina Wanjiru", "passport": "QZ7730141"}
VECTORS = json.loads((Path(__file__).resolve().parents[1] / "protocol/vectors/audit.json")
                     .read_text())


def hub_audit(hub_data: Path, capsys: pytest.CaptureFixture[str], *args: str) -> tuple[
        int, Any]:
    code = hub_main(["hub", "audit", "--data", str(hub_data), "--json", *args])
    return code, json.loads(capsys.readouterr().out)


def text_audit(hub_data: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    code = hub_main(["hub", "audit", "--data", str(hub_data)])
    return code, capsys.readouterr().out


def hub_entry(hub: Hub, node: int, seq: int) -> tuple[Any, Delta]:
    db = connect_hub_db(hub.data)
    rid, stamp, writer, data = db.execute("SELECT rid, stamp, node, data FROM ops WHERE rid = ?",
                                          [chain.audit_id(node, seq)]).fetchone()
    return db, decode(hub.store.sealer.open_op(rid, stamp, writer, data))


def test_entries_reach_the_hub_verified_and_hold_no_patient_values(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with served_hub(tmp_path) as (hub, url):
        a, b = Kiosk(tmp_path, "a", hub, "A"), Kiosk(tmp_path, "b", hub, "B")
        a.store.checkin(passport=PATIENT["passport"], name=PATIENT["name"], birth_year=1984,
                        reason="fever")
        assert audit.record(a.store, "presence", "provision", "refused:no-press") == 1
        assert audit.record(a.store, "17", "config.set", "ok", {"key": "console"}) == 2
        assert audit.record(a.store, "17", "restart", "ok", now_ms=1_800_000_000_000) == 3
        # Bad values are refused before anything is written: the chain does not move.
        bad: list[tuple[str, str, str, dict[str, Any] | None]] = [
            ("17", "checkin", "ok", {"name": PATIENT["name"]}), ("17", "Config Set", "ok", None),
            ("", "restart", "ok", None), ("17", "restart", "ok", {"n": [1, 2]})]
        for who, what, result, detail in bad:
            with pytest.raises(audit.AuditValueError):
                audit.record(a.store, who, what, result, detail)
        assert [e["status"] for e in audit.entries(a.store)] == ["verified"] * 3
        a.sync(url)
        b.sync(url)

        code, out = hub_audit(hub.data, capsys)
        assert code == 0
        by_device = {k["device"]: k for k in out["kiosks"]}
        ka = by_device[a.device]
        assert ka["ok"] and ka["gaps"] == [] and ka["last"] == 3
        assert [(e["seq"], e["who"], e["what"], e["result"], e["status"]) for e in
                ka["entries"]] == [(1, "presence", "provision", "refused:no-press", "verified"),
                                   (2, "17", "config.set", "ok", "verified"),
                                   (3, "17", "restart", "ok", "verified")]
        assert ka["entries"][1]["detail"] == {"key": "console"}
        assert ka["entries"][2]["time"] == 1_800_000_000_000
        assert by_device[b.device]["entries"] == [] and by_device[b.device]["ok"]
        code, one = hub_audit(hub.data, capsys, "--kiosk", a.device)
        assert code == 0 and [k["device"] for k in one["kiosks"]] == [a.device]
        assert hub_main(["hub", "audit", "--data", str(hub.data), "--kiosk", "0badc0de"]) == 2
        assert "no kiosk 0badc0de" in capsys.readouterr().err
        code, text = text_audit(hub.data, capsys)
        assert code == 0 and f"kiosk {a.device} 'North' A: 3 entries, chain verified" in text
        assert "#2 " in text and 'config.set ok {"key": "console"}' in text

        # No patient value in any entry, as the hub holds it or as it prints it ...
        raw = b"".join(op.data for op in hub.store.ops_in(*chain.id_range(a.store.node)))
        for value in PATIENT.values():
            assert value.encode() not in raw and value not in json.dumps(out)
        # ... and the entries stay between a kiosk and the hub: B never pulled A's.
        assert b.store.deltas_in(*chain.id_range()) == []
        a.close()
        b.close()


def test_gap_stays_open_until_the_entry_arrives_and_tampering_is_flagged(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with served_hub(tmp_path) as (hub, url):
        k = Kiosk(tmp_path, "k", hub, "A")
        node = k.store.node
        for what in ("provision", "time.set", "config.set", "restart"):
            audit.record(k.store, "41", what, "ok")
        # Entry 2 leaves the outbox unsent (lost on the way): the hub gets 1, 3 and 4.
        k.store.close()
        with sqlite3.connect(k.store.path) as db:
            assert db.execute("DELETE FROM outbox WHERE rid = ?",
                              [chain.audit_id(node, 2)]).rowcount == 1
        k.store.__init__(k.store.data)  # type: ignore[misc]
        k.sync(url)
        code, out = hub_audit(hub.data, capsys)
        (ka,) = out["kiosks"]
        assert code == 1 and not ka["ok"] and ka["gaps"] == [[2, 2]]
        assert [(e["seq"], e["status"]) for e in ka["entries"]] == [
            (1, "verified"), (3, "after-gap"), (4, "verified")]
        code, text = text_audit(hub.data, capsys)
        assert code == 1 and "GAP: entry 2 missing" in text and "<- AFTER-GAP" in text
        # Still open at the next look: a gap is a hole, not an event.
        assert hub_audit(hub.data, capsys)[1]["kiosks"][0]["gaps"] == [[2, 2]]

        # It arrives late, after 3 and 4: the gap closes and the chain verifies.
        assert k.store.outbox_requeue_local() >= 1
        k.sync(url)
        code, out = hub_audit(hub.data, capsys)
        assert code == 0 and out["kiosks"][0]["ok"]
        assert [e["status"] for e in out["kiosks"][0]["entries"]] == ["verified"] * 4

        # Someone edits entry 4's result in the hub's database: its signature fails.
        # (with the hub's store key: the audit's signatures hold against its holder too)
        db, delta = hub_entry(hub, node, 4)
        edited = Delta(delta.record_id, delta.type, delta.node, delta.stamp,
                       set={**delta.set, AUDIT.field("outcome").number: "refused"})
        db.execute("UPDATE ops SET data = ? WHERE rid = ?", hub.store.sealer.seal_ops(
            [(delta.record_id, delta.stamp, delta.node, encode(edited))]) + [delta.record_id])
        # ... and deletes entry 2 (the middle of the chain): a gap again.
        db.execute("DELETE FROM ops WHERE rid = ?", [chain.audit_id(node, 2)])
        db.commit()
        db.close()
        # A forged entry 5 written on the kiosk outside the audit (no kiosk signature).
        forged = {"sequence": 5, "recorded": 1, "agent": "41", "action": "wipe",
                  "outcome": "ok", "prev": "00" * 32, "signature": "11" * 64}
        k.store.put("audit", str(uuid.UUID(bytes=chain.audit_id(node, 5))), forged)
        k.sync(url)
        code, out = hub_audit(hub.data, capsys)
        (ka,) = out["kiosks"]
        assert code == 1 and ka["gaps"] == [[2, 2]]
        assert {e["seq"]: e["status"] for e in ka["entries"]} == {
            1: "verified", 3: "after-gap", 4: "bad-signature", 5: "bad-signature"}
        code, text = text_audit(hub.data, capsys)
        assert "2 BAD-SIGNATURE" in text and "<- BAD-SIGNATURE" in text
        # The audit's next entry still follows the kiosk's own chain (4), not the forgery.
        assert audit.record(k.store, "41", "status", "ok") == 5
        k.close()


def test_vectors_byte_for_byte() -> None:
    key = Ed25519PrivateKey.from_private_bytes(bytes.fromhex(VECTORS["kiosk_seed"]))
    public, node = key.public_key().public_bytes_raw(), VECTORS["node"]
    deltas = []
    for v in VECTORS["entries"]:
        entry = chain.make_entry(v["seq"], v["time"], v["who"], v["what"], v["result"],
                                 v["detail"])
        prev, seq = bytes.fromhex(v["prev"]), v["seq"].to_bytes(8, "big")
        assert entry.encode().hex() == v["entry"] and entry.detail == v["detail_text"]
        # The format itself, apart from the code: SPEC.md "Audit".
        assert hashlib.sha256(b"haven-audit\0" + prev + seq + bytes.fromhex(v["entry"])
                              ).hexdigest() == v["hash"]
        head = b"haven-audit-head\0" + f"{node:08x}".encode() + b"\0" + seq + bytes.fromhex(
            v["hash"])
        public_key = key.public_key()
        public_key.verify(bytes.fromhex(v["sig"]), head)
        signed = chain.sign(key, node, prev, entry)
        assert (signed.hash.hex(), signed.sig.hex()) == (v["hash"], v["sig"])
        assert chain.audit_id(node, v["seq"]).hex() == v["record_id"]
        deltas.append(Delta(bytes.fromhex(v["record_id"]), AUDIT.number, node, v["seq"], set={
            AUDIT.field(n).number: x for n, x in signed.values().items()}))
    assert chain.verify(node, public, deltas)["ok"]


def test_details_are_json_dumps_canonical_text_and_codes_are_whole() -> None:
    """detail_text writes its JSON itself (it runs under MicroPython too): the text is
    json.dumps's, keys sorted, no spaces, non-ASCII as is, every escape as CPython's."""
    odd = "".join(map(chr, range(0x20))) + '"\\/\x7f\u00e9\u2028\U0001f600\ud800'
    for detail in ({}, {"b": odd, "a": None, "c": True, "d": -(10**20), "e": False},
                   {"key": "console", "restart": True}):
        assert chain.detail_text(detail) == json.dumps(
            detail, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    for who, what in (("7\n", "status"), ("7", "status\n"), ("x" * 65, "status"),
                      ("7", "a" * 65), ("-7", "status"), ("7", "Status")):
        with pytest.raises(chain.AuditValueError):
            chain.make_entry(1, 0, who, what, "ok")
    assert chain.make_entry(1, 0, "A" * 64, "a" * 64, "ok:1.2_3-4").who == "A" * 64


def _signed(key: Ed25519PrivateKey, node: int, seq: int, prev: bytes,
            what: str = "status") -> tuple[chain.Signed, Delta]:
    signed = chain.sign(key, node, prev, chain.make_entry(seq, 1000 + seq, "9", what, "ok"))
    values = {AUDIT.field(n).number: v for n, v in signed.values().items()}
    return signed, Delta(chain.audit_id(node, seq), AUDIT.number, node, seq << 16, set=values)


def test_verify_links_rewrites_and_shapes() -> None:
    key, node = Ed25519PrivateKey.generate(), 0x1234ABCD
    public = key.public_key().public_bytes_raw()
    one, d1 = _signed(key, node, 1, GENESIS)
    two, d2 = _signed(key, node, 2, one.hash)
    _, off = _signed(key, node, 3, b"\x07" * 32)  # signed, but over another predecessor
    assert chain.verify(node, public, [off, d2, d1])["ok"] is False
    got = chain.verify(node, public, [off, d2, d1])
    assert [(e["seq"], e["status"]) for e in got["entries"]] == [
        (1, "verified"), (2, "verified"), (3, "unlinked")]
    _, again = _signed(key, node, 2, one.hash, what="wipe")  # a second entry 2
    assert [e["status"] for e in chain.verify(node, public, [d1, d2, again])["entries"]] == [
        "verified", "rewritten"]
    other = Ed25519PrivateKey.generate().public_key().public_bytes_raw()
    assert {e["status"] for e in chain.verify(node, other, [d1, d2])["entries"]} == {
        "bad-signature"}
    # Entry 2 as if of another kiosk (its record names node + 1): refused as such.
    moved = Delta(chain.audit_id(node + 1, 2), AUDIT.number, node, 5, set=d2.set)
    assert chain.verify(node, public, [d1, moved])["entries"][1]["status"] == "malformed"
    assert chain.verify(node, public, [])["ok"] and chain.verify(node, public, [d2])[
        "gaps"] == [[1, 1]]
    assert chain.audit_id(node, 1) < chain.audit_id(node, 2) < chain.id_range(node)[1]
    assert uuid.UUID(bytes=chain.audit_id(node, 1)).version == 8
    with pytest.raises(chain.AuditValueError):
        chain.make_entry(1, 0, "9", "status", "ok", {"birthdate": "1984"})
    with pytest.raises(chain.AuditValueError):
        chain.make_entry(1, 0, "9", "status", "ok", {"note": "x" * 10})


def test_chain_starts_again_for_a_new_node(tmp_path: Path) -> None:
    from device.store import init_store

    store = init_store(tmp_path / "k", "North", "A")
    assert [audit.record(store, "3", "status", "ok") for _ in range(2)] == [1, 2]
    held = store.reader.execute("SELECT value FROM meta WHERE key = ?", [HEAD_KEY]).fetchone()
    assert held is not None
    old = store.node
    store.take_new_node()  # re-provisioned after a clone alert
    assert audit.record(store, "3", "status", "ok") == 1
    assert [e["seq"] for e in audit.entries(store)] == [1]
    # The old identity's entries stay as they were, never written again as the new one's.
    assert len(store.deltas_in(*chain.id_range(old))) == 2
    assert store.reader.execute("SELECT COUNT(*) FROM outbox WHERE rid BETWEEN ? AND ?",
                                chain.id_range()).fetchone()[0] == 1
    store.close()


def test_technician_log(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(tech_log.ENV, raising=False)
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    path = tech_log.default_path()
    assert path == tmp_path / "xdg" / "haven" / "tech.log"
    assert tech_log.read().entries == []
    tech_log.write("provision", "ok", port="/dev/ttyACM0", kiosk="1a2b3c4d", serial=17,
                   detail={"site": "North"}, now=1_800_000_000.25)
    tech_log.write("config.set", "refused: out of scope", port="/dev/ttyACM0", serial=17)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    with path.open("ab") as f:
        f.write(b'{"action": "pull", "res')  # a line cut short by a power cut
    log = tech_log.read()
    assert log.skipped == 1
    assert [(e["action"], e["result"]) for e in log.entries] == [
        ("provision", "ok"), ("config.set", "refused: out of scope")]
    assert log.entries[0] == {"at": "2027-01-15T08:00:00.250Z", "action": "provision",
                              "result": "ok", "port": "/dev/ttyACM0", "kiosk": "1a2b3c4d",
                              "serial": 17, "detail": {"site": "North"}}
    monkeypatch.setenv(tech_log.ENV, str(tmp_path / "elsewhere.log"))
    tech_log.write("time", "ok")
    assert [e["action"] for e in tech_log.read(limit=5).entries] == ["time"]


def test_an_unreadable_entry_is_counted_and_reported(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from host.hub.audit import problems, report
    from host.hub.hub import Hub, init_hub
    from host.hub.storage import Op

    init_hub(tmp_path / "hub")
    with Hub(tmp_path / "hub") as hub:
        k = Kiosk(tmp_path, "k", hub, "A")
        hub.store.add_local(Op(chain.audit_id(k.store.node, 1), 1, k.store.node, b"\xff\x00"))
        (got,) = report(hub.store)
        assert got["unreadable"] == 1 and not got["ok"] and problems(got) == ["1 UNREADABLE"]
        k.close()
    assert text_audit(tmp_path / "hub", capsys)[0] == 1


def test_entries_made_before_an_offline_approval_follow_the_kiosk_to_its_node(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from device import enrol
    from device.store import init_store
    from device.sync.engine import run_round
    from device.sync.state import SyncState
    from protocol.driver.wall_clock import wall_ms

    with served_hub(tmp_path) as (hub, url):
        now = wall_ms()
        doc = hub.approve("North", 1, 24, now)[0]
        store = init_store(tmp_path / "k", "Unset")
        # Two refused attempts on the fresh kiosk, then provisioning with the approval.
        assert audit.record(store, "presence", "provision", "refused:no-press") == 1
        assert audit.record(store, "7", "provision", "refused:wrong-code") == 2
        old = store.node
        approval = enrol.install_approval(store, doc, hub.ed_public, now + 1)
        assert store.node == approval.node != old
        assert [(e["seq"], e["result"], e["status"]) for e in audit.entries(store)] == [
            (1, "refused:no-press", "verified"), (2, "refused:wrong-code", "verified")]
        assert store.deltas_in(*chain.id_range(old)) == []  # nothing left under the old node
        assert audit.record(store, "7", "provision", "ok") == 3
        x_key, _ = enrol.ensure_keys(store.data)
        made = hub.enroll_by_approval(enrol.enrolment(store.data) or b"",
                                      x_key.public_key().public_bytes_raw(), now + 2)
        assert made.cert is not None
        enrol.install(store, made.cert)
        state = SyncState(store.data)
        run_round(store, state, enrol.load(store.data), url, limit=20.0)
        code, out = hub_audit(hub.data, capsys)
        (k,) = out["kiosks"]
        assert code == 0 and k["ok"] and [(e["seq"], e["who"], e["result"]) for e in
                                          k["entries"]] == [
            (1, "presence", "refused:no-press"), (2, "7", "refused:wrong-code"),
            (3, "7", "ok")]
        # Any other write still bars a kiosk from taking another identity.
        store.checkin(passport="P1234567", name="A. Patient", birth_year=1990)
        with pytest.raises(Exception, match="written records already"):
            store.take_node(approval.node + 2, lambda: enrol.ensure_keys(store.data)[1])
        state.close()
        store.close()


def test_technician_log_around_a_command(tmp_path: Path) -> None:
    path = tmp_path / "tech.log"
    with tech_log.logged("status", port="/dev/ttyACM0", path=path) as act:
        act.kiosk, act.serial = "1a2b3c4d", 17
    with pytest.raises(TimeoutError), tech_log.logged("pull", port="/dev/ttyACM0",
                                                      path=path) as act:
        act.detail = {"name": "logs.tar"}
        raise TimeoutError("no answer from the kiosk")
    with tech_log.logged("time", path=tmp_path / "not-a-dir" / "x" / "tech.log") as act:
        (tmp_path / "not-a-dir").write_text("")  # the log cannot be written: the command goes on
        act.result = "ok:unchanged"
    got = [(e["action"], e["result"], e.get("kiosk"), e.get("serial"), e.get("detail"))
           for e in tech_log.read(path).entries]
    assert got == [("status", "ok", "1a2b3c4d", 17, None),
                   ("pull", "error: TimeoutError: no answer from the kiosk", None, None,
                    {"name": "logs.tar"})]
