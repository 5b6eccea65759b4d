"""Wiping a kiosk (device/wipe.py): refused while anything is unsynced, with the counts and
nothing erased; with --discard-unsynced, keys destroyed and data erased, and the runtime
then starts as a fresh kiosk. ``haven tech wipe`` over the console's Haven session, under
presence, its audit entry at the hub before the keys go. A revoked kiosk destroys its keys
at its next contact with a real hub on 127.0.0.1, and keeps showing REVOKED."""

from __future__ import annotations

import asyncio
import io
import json
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest
from gpiozero.pins.mock import MockFactory

from device import enrol
from device import wipe as kiosk_wipe
from device.cli import main as kiosk_main
from device.config import KioskConfig
from device.hardware import panel as hw
from device.run_lock import hold
from device.runtime import Runtime
from device.status import ERROR, REVOKED, SYNCED
from device.store import Store, init_store
from device.sync.document_store import attach
from device.sync.engine import run_round
from device.sync.state import SyncState
from device.tech.trusted_time import SYNC, TrustedClock
from device.tech.wipe_command import Wiper, runtime_wiper
from host import tech_log
from host.cli import main as haven_main
from host.hub import audit as hub_audit
from host.hub import technician
from host.hub.hub import Hub
from host.hub.serve import Server
from protocol.sync import credential as c

from .console_helpers import Cable
from .tech_helpers import tech_kiosk
from .test_sync_helpers import served_hub
from .test_sync_push import kiosk_runtime
from .test_ui_helpers import free_port, make_kiosk, runtime_in_thread

BOUND = 10.0


def wait_until(cond: Callable[[], object], what: str, bound: float = BOUND) -> None:
    end = time.monotonic() + bound
    while not cond():
        assert time.monotonic() < end, f"not within {bound} s: {what}"
        time.sleep(0.02)


def kiosk_with_data(tmp: Path) -> Path:
    data = tmp / "kiosk"
    with init_store(data, "North", "B") as store:
        enrol.write_request(store)
        patient = store.checkin(name="Amina Wipetest").patient_id
        doc = tmp / "scan.pdf"
        doc.write_bytes(b"%PDF-1.4 a scan" * 100)
        attach(store, doc, patient=patient, title="scan")
    return data


def fresh_runtime(data: Path) -> Runtime:
    cfg = KioskConfig(data=data, hub=[], ui="127.0.0.1:0", retry_max=0.5,
                      hardware="simulated")
    return Runtime(cfg, hardware=hw.Hardware(pin_factory=MockFactory()))


def test_a_wipe_with_unsynced_data_is_refused_with_the_counts_and_erases_nothing(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = kiosk_with_data(tmp_path)
    keys = {name: (data / name).read_bytes() for name in kiosk_wipe.KEY_FILES}
    assert kiosk_main(["wipe", "--data", str(data)]) == 1  # refused before it asks
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    lost = kiosk_wipe.unsynced_of(data)
    assert (lost.entries, lost.documents) == (3, 1)  # patient, check-in, document record
    assert (f"{lost.entries} outbox entries the hub has not acknowledged, 1 documents not "
            "sent would be lost") in err and "--discard-unsynced" in err
    assert {name: (data / name).read_bytes() for name in kiosk_wipe.KEY_FILES} == keys
    assert kiosk_wipe.read_marker(data) is None and (data / "documents.db").exists()
    with Store(data) as store:  # the kiosk as it was
        assert len(store.views()) == 3


def test_a_wipe_with_discard_destroys_the_keys_erases_the_data_and_starts_fresh(
        tmp_path: Path, capsys: pytest.CaptureFixture[str],
        caplog: pytest.LogCaptureFixture) -> None:
    data = kiosk_with_data(tmp_path)
    old_keys = {name: (data / name).read_bytes() for name in kiosk_wipe.KEY_FILES}
    with Store(data) as store:
        old_node = store.node
    (data / "export").mkdir()
    (data / "export" / "bundle.bin").write_bytes(b"sealed bundle")
    assert kiosk_main(["wipe", "--data", str(data), "--yes", "--discard-unsynced"]) == 0
    out = capsys.readouterr().out
    assert "wiped: keys destroyed" in out and "discarded: 3 outbox entries" in out
    assert "lost with the data" in out  # no link from here: its audit entry went too
    marker = kiosk_wipe.read_marker(data)
    assert marker is not None and marker["state"] == kiosk_wipe.WIPED
    assert marker["discarded"] == {"entries": 3, "quarantined": 0, "documents": 1}
    assert not (data / "export").exists() and not (data / "documents.db").exists()
    # A fresh kiosk in its place: new keys (none of the old bytes), a new node, no record.
    for name, old in old_keys.items():
        assert (data / name).read_bytes() != old, name
    with Store(data) as store:
        assert store.node != old_node and store.views() == []
        assert store.status()["site"] == "North"
    assert not (data / enrol.CERT).exists() and (data / enrol.REQUEST).exists()
    rt = fresh_runtime(data)
    with runtime_in_thread(rt):
        wait_until(lambda: rt.live.snapshot()["state"] == ERROR, "not enrolled shown")
    said = [r.getMessage() for r in caplog.records if "was wiped on" in r.getMessage()]
    assert len(said) == 1 and "it starts as a fresh kiosk, not enrolled" in said[0]
    assert kiosk_wipe.fresh_note(data) is not None


def test_a_wipe_cut_short_after_the_keys_is_finished_by_the_next_start(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    data = kiosk_with_data(tmp_path)
    with Store(data) as store:
        report = kiosk_wipe.wipe(store, who="presence", discard_unsynced=True)
    assert report.keys == list(kiosk_wipe.KEY_FILES) and report.audit_synced is False
    assert all(not (data / name).exists() for name in kiosk_wipe.KEY_FILES)
    with pytest.raises(kiosk_wipe.KeysDestroyed):  # no key made in their place
        enrol.ensure_keys(data)
    rt = fresh_runtime(data)  # the power came back: the runtime finishes the wipe
    with runtime_in_thread(rt):
        assert rt.store is not None and rt.store.views() == []
    assert any("it starts as a fresh kiosk" in r.getMessage() for r in caplog.records)
    assert kiosk_wipe.unsynced_of(data) == kiosk_wipe.Unsent()  # no outbox, no document


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_the_local_wipes_mistakes_are_one_line(tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str],
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    data = kiosk_with_data(tmp_path)
    monkeypatch.setattr("sys.stdin", _Terminal("no\n"))  # asked, and not confirmed
    assert kiosk_main(["wipe", "--data", str(data), "--discard-unsynced"]) == 1
    err = capsys.readouterr().err
    assert err == "haven-kiosk wipe: not confirmed: nothing erased\n"
    monkeypatch.undo()
    (tmp_path / "empty").mkdir()
    cases = {
        "no folder": (["--data", str(tmp_path / "none"), "--yes"], "holds no kiosk data"),
        "not a kiosk": (["--data", str(tmp_path / "empty"), "--yes"], "holds no kiosk data"),
        "no terminal": (["--data", str(data), "--discard-unsynced"], "pass --yes"),
    }
    for name, (argv, words) in cases.items():
        assert kiosk_main(["wipe", *argv]) == 1, name
        err = capsys.readouterr().err
        assert err.startswith("haven-kiosk wipe: ") and err.count("\n") == 1, (name, err)
        assert words in err, (name, err)
    assert not (tmp_path / "empty" / "run.lock").exists()
    with hold(data):  # a runtime is running on it
        assert kiosk_main(["wipe", "--data", str(data), "--yes", "--discard-unsynced"]) == 1
        err = capsys.readouterr().err
    assert "another haven-kiosk run" in err and err.count("\n") == 1
    assert all((data / name).exists() for name in kiosk_wipe.KEY_FILES)


def _press_repeatedly(hardware: hw.Hardware, done: threading.Event) -> threading.Thread:
    """Press the button for 0.4 s every 0.6 s until ``done``: one press begins inside any
    window the kiosk opens."""
    def run() -> None:
        while not done.wait(0.2):
            hardware.press(0.4)
    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def test_haven_tech_wipe_under_presence_with_its_audit_entry_at_the_hub(
        tmp_path: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    log = tmp_path / "tech.log"
    monkeypatch.setenv(tech_log.ENV, str(log))
    with tech_kiosk(tmp_path) as k:
        server = Server(k.hub, 5 * 60 * 1000)
        host, port = server.listen("tcp://127.0.0.1:0")
        state = SyncState(k.store.data)
        ident = enrol.load(k.store.data)

        def sync() -> bool:
            run_round(k.store, state, ident, f"tcp://{host}:{port}", limit=BOUND)
            return kiosk_wipe.unsynced(k.store).total == 0

        k.env.extra["wipe"] = Wiper(k.store, lambda: k.hardware.button.is_pressed, sync,
                                    window=1.5, hold=0.2)
        cred = tmp_path / "amina.cred"
        cred.write_bytes(c.dump_file(k.credential()))
        base = ["--credential", str(cred), "--timeout", "5"]
        k.store.checkin(name="Unsynced Patient")
        try:
            assert haven_main(["tech", "wipe", k.port, *base]) == 1
            err = capsys.readouterr().err
            lost = kiosk_wipe.unsynced(k.store)  # the check-in, and audit entries
            assert "refused by the kiosk (unsynced)" in err
            assert f" {lost.entries - 1} outbox entries the hub has not" in err  # - refusal's
            assert err.count("\n") == 1
            assert haven_main(["tech", "wipe", k.port, *base, "--discard-unsynced"]) == 1
            err = capsys.readouterr().err
            assert "(no-press)" in err and "not pressed within the window" in err
            assert (k.store.data / enrol.X_KEY).exists()
            done = threading.Event()
            presser = _press_repeatedly(k.hardware, done)
            try:
                assert haven_main(["tech", "wipe", k.port, *base, "--discard-unsynced",
                                   "--json"]) == 0
            finally:
                done.set()
                presser.join(BOUND)
            result = json.loads(capsys.readouterr().out)
        finally:
            state.close()
            server.shutdown()
        assert result["audit_synced"] is True and result["restarting"] is False
        assert result["keys"] == list(kiosk_wipe.KEY_FILES)
        # The hub holds the wipe's entry, signed by the key now gone, and the refusal.
        kiosks = hub_audit.report(k.hub.store, ident.cert.device_id)
    whats = [(e["what"], e["result"], e["status"]) for e in kiosks[0]["entries"]]
    assert ("tech.wipe", "refused:unsynced", "verified") in whats
    assert ("tech.wipe", "ok", "verified") in whats
    marker = kiosk_wipe.read_marker(k.store.data)
    assert marker is not None and marker["state"] == kiosk_wipe.WIPED
    lines = tech_log.read(log).entries
    assert [e["result"] for e in lines][-1] == "ok"
    assert lines[-1]["action"] == "wipe" and lines[-1]["detail"]["audit_synced"] is True


def test_a_revoked_kiosk_destroys_its_keys_at_its_next_contact_and_stays_revoked(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with served_hub(tmp_path) as (hub, url):
        with kiosk_runtime(tmp_path, url, hub) as (rt, kiosk):
            data = kiosk.store.data
            wait_until(lambda: rt.live.snapshot()["state"] == SYNCED, "the first round")
            assert rt.address is not None and _checkin(rt.address) == 200
            hub.revoke(kiosk.device)
            wait_until(lambda: rt.live.snapshot()["state"] == REVOKED, "revoked shown")
            wait_until(lambda: not (data / enrol.X_KEY).exists(), "keys destroyed")
            assert all(not (data / name).exists() for name in kiosk_wipe.KEY_FILES)
            assert (data / "store.db").exists() and (data / enrol.CERT).exists()  # sealed
            assert _checkin(rt.address) == 503  # nothing sealed under a key that is gone
        marker = kiosk_wipe.read_marker(data)
        assert marker is not None and marker["state"] == kiosk_wipe.REVOKED
        # A restart: still REVOKED, no crash, no key made again, no store opened.
        rt2 = Runtime(KioskConfig(data=data, hub=[url], ui="127.0.0.1:0", retry_max=0.5,
                                  hardware="simulated"),
                      hardware=hw.Hardware(pin_factory=MockFactory()))
        with runtime_in_thread(rt2):
            wait_until(lambda: rt2.live.snapshot()["state"] == REVOKED, "revoked again")
            assert rt2.hardware.led.pattern == REVOKED
            assert rt2.address is not None and _checkin(rt2.address) == 503
        assert not (data / enrol.X_KEY).exists()
    assert kiosk_main(["status", "--data", str(data)]) == 1  # one line that says why
    assert "keys were destroyed (the hub revoked this kiosk)" in capsys.readouterr().err
    # A technician can then wipe it for another life: nothing can sign, nothing to keep.
    assert kiosk_main(["wipe", "--data", str(data), "--yes"]) == 0
    assert kiosk_wipe.read_marker(data)["state"] == kiosk_wipe.WIPED  # type: ignore[index]


def _checkin(address: tuple[str, int]) -> int:
    host, port = address
    req = urllib.request.Request(f"http://{host}:{port}/api/checkin",
                                 data=json.dumps({"passport": "ZZ998877", "reason": "sick",
                                                  "year": "1990"}).encode(),
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=BOUND) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)


def test_the_runtimes_wipe_pushes_its_audit_entry_then_refuses_check_ins_then_starts_fresh(
        tmp_path: Path) -> None:
    with served_hub(tmp_path) as (hub, url):
        with kiosk_runtime(tmp_path, url, hub, provision_window=2.0,
                           provision_hold=0.2) as (rt, kiosk):
            data = kiosk.store.data
            wait_until(lambda: rt.live.snapshot()["state"] == SYNCED, "the first round")
            assert rt.address is not None and _checkin(rt.address) == 200
            w = runtime_wiper(rt, audit_wait=BOUND)
            assert (w.window, w.hold) == (2.0, 0.2)
            wait_until(lambda: kiosk_wipe.unsynced(w.store).total == 0, "the check-in synced")
            report = kiosk_wipe.wipe(w.store, who="7", sync=w.sync, what="tech.wipe")
            w.keys_gone("wiped")
            assert report.audit_synced is True and report.discarded.total == 0
            assert _checkin(rt.address) == 503
        device = kiosk.device
        whats = [(e["what"], e["who"]) for e in hub_audit.report(hub.store, device)[0]["entries"]]
        assert ("tech.wipe", "7") in whats
    rt2 = fresh_runtime(data)  # the restart: the data goes, a fresh kiosk starts
    with runtime_in_thread(rt2):
        assert rt2.store is not None and rt2.store.views() == []
        assert f"{rt2.store.node:08x}" != device


def test_haven_tech_wipe_on_the_runtimes_console_restarts_it_as_a_fresh_kiosk(
        tmp_path: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(tech_log.ENV, str(tmp_path / "tech.log"))
    hub_dir, data = make_kiosk(tmp_path)
    with Store(data) as store:
        store.checkin(name="Never Synced")  # no hub answers: it stays unsynced
    now = int(time.time() * 1000)
    TrustedClock(data).note(SYNC, now)  # as its last sync's welcome said
    with Hub(hub_dir) as hub:
        _, doc = technician.issue(hub, name="Amina", sites=["North"], now_ms=now)
    cred = tmp_path / "amina.cred"
    cred.write_bytes(doc)
    cable = Cable()
    cfg = KioskConfig(data=data, hub=[f"tcp://127.0.0.1:{free_port()}"], ui="127.0.0.1:0",
                      retry_max=0.5, interval=0.5, round_limit=1.0, hardware="simulated",
                      console=cable.a, console_baud=1_000_000, provision_window=3.0,
                      provision_hold=0.2)
    rt = Runtime(cfg, hardware=hw.Hardware(pin_factory=MockFactory()))
    got: dict[str, int] = {}

    def technician_at_the_port() -> None:
        end = time.monotonic() + BOUND
        while rt.console is None and time.monotonic() < end:
            time.sleep(0.02)
        done = threading.Event()
        presser = _press_repeatedly(rt.hardware, done)
        try:
            got["code"] = haven_main(["tech", "wipe", cable.b, "--credential", str(cred),
                                      "--timeout", "5", "--discard-unsynced"])
        finally:
            done.set()
            presser.join(BOUND)
            if "code" not in got or got["code"] != 0:
                rt.restart()

    thread = threading.Thread(target=technician_at_the_port, daemon=True)
    thread.start()
    try:
        asyncio.run(asyncio.wait_for(rt.run(), 2 * BOUND))
    finally:
        thread.join(BOUND)
        cable.close()
    out = capsys.readouterr().out
    assert got == {"code": 0} and rt.restart_asked
    assert "wiped: keys destroyed" in out and "could not reach the hub" in out
    marker = kiosk_wipe.read_marker(data)
    assert marker is not None and marker["state"] == kiosk_wipe.WIPING
    assert marker["discarded"]["entries"] >= 2 and marker["by"] != "presence"  # + audit
    assert all(not (data / name).exists() for name in kiosk_wipe.KEY_FILES)
    rt2 = fresh_runtime(data)  # systemd starts it again
    with runtime_in_thread(rt2):
        assert rt2.store is not None and rt2.store.views() == []
    assert kiosk_wipe.read_marker(data)["state"] == kiosk_wipe.WIPED  # type: ignore[index]
    line = tech_log.read(tmp_path / "tech.log").entries[-1]
    assert line["action"] == "wipe" and "lost with its data" in line["result"]
