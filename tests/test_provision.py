"""``haven tech provision`` through a pty cable to a fresh kiosk's console, its service
button on gpiozero's MockFactory, and a hub served on 127.0.0.1: offline with an approval
and online with the hub, each then syncing with the hub; every refusal changes nothing on
the kiosk but its audit; a rogue device without the code cannot complete."""

from __future__ import annotations

import contextlib
import io
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from gpiozero.pins.mock import MockFactory

from device import audit, enrol
from device.console.env import ConsoleEnv
from device.console.server import ConsoleServer
from device.hardware import panel as hw
from device.store import Store, init_store
from device.sync.engine import run_round
from device.sync.loop import SyncLoop
from device.sync.state import SyncState
from device.tech.presence import await_hold
from device.tech.provision import EXTRA, Provisioner
from device.tech.service import TechEnv, TechService
from device.ui.live import LiveStatus
from host.cli import main as haven_main
from host.errors import HavenError, UsageError
from host.hub import technician
from host.hub.audit import report
from host.hub.hub import Hub
from host.tech.client import CommandRefused
from host.tech.provision import ProvisionClient, ProvisionRefused, provision
from protocol import sas
from protocol.driver.wall_clock import wall_ms
from protocol.sync import approval as sync_approval
from protocol.sync import credential as c

from .console_helpers import Cable, fake_stats, run_beside_technician
from .test_sync_helpers import served_hub

HOLD, WINDOW, TIMEOUT = 0.25, 2.5, 5.0  # window: room for a loaded machine


@dataclass
class Fresh:
    """A kiosk fresh from its image: a store, its console, its button."""

    cable: Cable
    store: Store
    hardware: hw.Hardware
    config: Path
    shown: list[str | None] = field(default_factory=list)
    clock_set: list[float] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    finger: threading.Lock = field(default_factory=threading.Lock)
    restarts: list[int] = field(default_factory=list)
    prov: Provisioner | None = None

    @property
    def port(self) -> str:
        return self.cable.b

    def press(self, seconds: float = HOLD + 0.15) -> None:
        pin = self.hardware.button.button.pin
        with self.finger:  # one press at a time: a second waits for the first's release
            pin.drive_low()
            threading.Event().wait(seconds)
            pin.drive_high()
            threading.Event().wait(0.1)  # a finger lifted is up for a moment

    def press_on_note(self, seconds: float = HOLD + 0.15) -> Callable[[str], None]:
        """The technician presses the button when the tool says the kiosk asks."""
        def note(text: str) -> None:
            self.notes.append(text)
            if "service button" in text:
                threading.Thread(target=self.press, args=(seconds,), daemon=True).start()
        return note

    def screen(self, ours: str) -> str:
        """What the technician reads on the kiosk's screen."""
        code = self.shown[-1]
        assert code is not None
        return code

    def untouched(self, node: int) -> None:
        """Nothing changed on the kiosk but its audit."""
        data = self.store.data
        assert not any((data / n).exists() for n in (enrol.CERT, enrol.APPROVAL,
                                                      enrol.REQUEST))
        assert self.store.node == node and not self.config.exists() and self.clock_set == []
        assert self.restarts == []
        assert self.shown[-1:] in ([], [None])


@contextlib.contextmanager
def fresh_kiosk(tmp: Path, name: str = "kiosk",
                runtime: SimpleNamespace | None = None) -> Iterator[Fresh]:
    """``runtime``: the provisioner is the one the runtime's console makes from it."""
    cable = Cable()
    hardware = hw.Hardware(pin_factory=MockFactory())
    store = init_store(tmp / name, "Unset")
    k = Fresh(cable, store, hardware, tmp / f"{name}.toml")
    k.prov = prov = Provisioner(store, pressed=lambda: hardware.button.is_pressed, window=WINDOW,
                       hold=HOLD, show_code=k.shown.append, set_wall=k.clock_set.append,
                       config_file=k.config)
    console = ConsoleEnv(export_dir=tmp / name / "export", import_dir=tmp / name / "import",
                         stats=fake_stats, restart=lambda: k.restarts.append(1))
    extra: dict[str, Any] = {EXTRA: prov}
    if runtime is not None:
        runtime.store, runtime.hardware = store, hardware
        extra = {"runtime": runtime}
    env = TechEnv(console=console, config_file=k.config, extra=extra)
    service = TechService(env, static_key=enrol.ensure_keys(store.data)[0])
    server = ConsoleServer(cable.a, console, haven=service)
    server.start()
    try:
        yield k
    finally:
        prov.stop.set()
        server.stop()
        service.stop()
        cable.close()
        hardware.close()
        store.close()


def credential(hub: Hub, **kw: Any) -> c.CredentialFile:
    kw.setdefault("name", "Amina")
    kw.setdefault("sites", ["North"])
    _, doc = technician.issue(hub, **kw)
    return c.load_file(doc)


def approvals(hub: Hub, path: Path, count: int = 1) -> Path:
    path.write_bytes(sync_approval.dump_file(hub.approve("North", count, 24, wall_ms())))
    return path


def sync_once(store: Store, url: str) -> None:
    state = SyncState(store.data)
    try:
        run_round(store, state, enrol.load(store.data), url, limit=15.0)
    finally:
        state.close()


def audited(store: Store) -> list[tuple[str, str, str]]:
    return [(e["who"], e["what"], e["result"]) for e in audit.entries(store)]


def test_offline_with_an_approval_then_the_first_sync_enrols_it(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("HAVEN_TECH_LOG", str(tmp_path / "tech.log"))
    with served_hub(tmp_path) as (hub, url), fresh_kiosk(tmp_path) as k:
        cred = credential(hub)
        cred_file = tmp_path / "amina.cred"
        cred_file.write_bytes(c.dump_file(cred))
        file = approvals(hub, tmp_path / "north.approvals")
        ap = sync_approval.read_approval(sync_approval.load_file(file.read_bytes())[0],
                                         hub.ed_public)
        # the technician presses when asked, and types what the kiosk's screen shows
        pressed = k.press_on_note()
        monkeypatch.setattr("host.progress.Progress.note", lambda self, text: pressed(text))
        typed: list[str] = []
        monkeypatch.setattr("sys.stdin", _LazyLine(lambda: typed.append(k.screen("")) or
                                                   typed[-1]))
        code = haven_main(["tech", "provision", k.port, "--credential", str(cred_file),
                           "--approval", str(file), "--hub-url", url, "--sas", "-",
                           "--timeout", str(TIMEOUT)])
        out = capsys.readouterr().out
        assert code == 0, out
        # the tool asked for the kiosk's code and never showed its own (copying it from
        # the laptop would defeat the comparison)
        assert typed and typed[0].replace(" ", "") not in out.replace(" ", ""), out
        assert "type it here" in out
        assert f"kiosk {ap.device_id} provisioned: site 'North', letter {ap.letter}" in out
        assert k.store.node == ap.node and not (k.store.data / enrol.CERT).exists()
        assert k.restarts == [1]
        assert f'hub = ["{url}"]' in k.config.read_text()
        assert len(k.clock_set) == 1  # no better source than the tool
        serial = str(c.read_technician(cred.certificate, cred.hub_ed25519).serial)
        assert audited(k.store) == [
            (serial, "provision.presence", "ok"), (serial, "provision.code", "ok"),
            (serial, "provision.approval", "ok")]
        # Its first sync (the runtime's loop, on a session kept open) presents the
        # approval; the hub's certificate is installed, and the next round is an enrolled
        # kiosk's, on a new session under its certificate.
        state = SyncState(k.store.data)
        loop = SyncLoop(k.store, state, enrol.load(k.store.data), [url], keepalive=30.0)
        try:
            assert loop.ident.enrol is not None and loop.ident.cert.raw == b""
            assert loop.round(lambda: 15.0).summary is not None
            cert = enrol.load(k.store.data).cert
            assert cert.raw and cert.device_id == ap.device_id and cert.letter == ap.letter
            assert loop.ident.enrol is None and loop.ident.cert.raw == cert.raw
            assert k.store.fleet_key == hub.fleet_key
            assert loop.round(lambda: 15.0).summary is not None
        finally:
            loop.close()
            state.close()
        (got,) = report(hub.store, ap.device_id)
        assert got["ok"] and [(e["who"], e["what"]) for e in got["entries"]] == [
            (serial, "provision.presence"), (serial, "provision.code"),
            (serial, "provision.approval"), (str(cert.serial), "enrol.certificate")]
        # The same approval again, for another kiosk: the technician's log refuses it.
        with fresh_kiosk(tmp_path, "second") as k2:
            node = k2.store.node
            assert haven_main(["tech", "provision", k2.port, "--credential", str(cred_file),
                               "--approval", str(file), "--sas", "123456"]) == 2
            assert "was used already" in capsys.readouterr().err
            k2.untouched(node)
            assert audited(k2.store) == []


class _LazyLine(io.StringIO):
    """Standard input whose line is what the kiosk's screen shows when it is read."""

    def __init__(self, line: Callable[[], str]) -> None:
        super().__init__()
        self._line = line

    def readline(self, size: int | None = -1) -> str:  # type: ignore[override]
        return self._line() + "\n"


def test_online_with_the_hub_then_it_syncs(tmp_path: Path) -> None:
    with served_hub(tmp_path) as (hub, url), fresh_kiosk(tmp_path) as k:
        cred = credential(hub)
        got = provision(k.port, cred, hub=url, site="North", hub_urls=[url],
                        ask_code=k.screen, note=k.press_on_note(), timeout=TIMEOUT)
        cert = enrol.load(k.store.data).cert
        assert (got.kiosk, got.site, got.letter, got.certificate) == (
            cert.device_id, "North", "A", cert.serial)
        assert cert.hub_ed25519 == hub.ed_public and k.store.fleet_key == hub.fleet_key
        assert hub.store.device(cert.device_id) is not None
        serial = str(c.read_technician(cred.certificate, cred.hub_ed25519).serial)
        assert [w for w, _, _ in audited(k.store)] == [serial] * 4
        sync_once(k.store, url)
        (rep,) = report(hub.store, cert.device_id)
        assert rep["ok"] and [e["what"] for e in rep["entries"]] == [
            "provision.presence", "provision.code", "provision.request", "provision.install"]
        assert [e for e in hub.store.events() if "provisioned" in str(e)]
        assert f'hub = ["{url}"]' in k.config.read_text() and len(k.clock_set) == 1
        assert k.restarts == [1]  # to sync with the hub it was given
        # A kiosk provisioned already says so in one line, and stays as it is.
        with pytest.raises(CommandRefused, match=r"already-provisioned\): this kiosk is "
                           "provisioned already"):
            provision(k.port, cred, hub=url, site="North", ask_code=k.screen,
                      note=k.press_on_note(), timeout=TIMEOUT)
        assert enrol.load(k.store.data).cert.raw == cert.raw


@pytest.mark.parametrize("case", ["no-press", "early-press", "wrong-code", "expired",
                                  "revoked", "out-of-scope", "forged-hub", "image-hub"])
def test_refused_changes_nothing_on_the_kiosk(tmp_path: Path, case: str,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    with served_hub(tmp_path) as (hub, url), fresh_kiosk(tmp_path) as k:
        node = k.store.node
        file = approvals(hub, tmp_path / "north.approvals")
        cred = credential(hub)
        note: Callable[[str], None] = k.press_on_note()
        ask: Callable[[str], str] = k.screen
        if case == "no-press":
            note = k.notes.append
        elif case == "early-press":  # pressed before the window and held through it
            k.hardware.button.button.pin.drive_low()
            note = k.notes.append
        elif case == "wrong-code":
            ask = lambda ours: str((int(k.screen(ours)) + 1) % 10**6).zfill(6)  # noqa: E731
        elif case == "expired":
            cred = credential(hub, hours=0.5, now_ms=wall_ms() - 3 * 3600_000)
        elif case == "revoked":
            serial = c.read_technician(cred.certificate, cred.hub_ed25519).serial
            cred = c.CredentialFile(cred.key, cred.certificate, cred.hub_ed25519,
                                    technician.revoke(hub, serial))
        elif case == "out-of-scope":
            cred = credential(hub, sites=["South"])
        elif case == "image-hub":  # the kiosk's image names another hub than this one:
            assert k.prov is not None  # seen in the approval, which comes with the code
            k.prov.image_hub = bytes(32)
        elif case == "forged-hub":  # a credential of another hub, which signed no approval
            from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

            other = Ed25519PrivateKey.generate()
            tech = Ed25519PrivateKey.generate()
            doc = c.issue(other, name="Mallory", serial=1, sites=("North",),
                          technician_ed25519=tech.public_key().public_bytes_raw(),
                          not_before=wall_ms() - 1000, expires=wall_ms() + 3600_000)
            cred = c.CredentialFile(tech, doc, other.public_key().public_bytes_raw())
        sent: list[dict[str, Any]] = []
        call = ProvisionClient.call

        def spy(self: ProvisionClient, command: str, args: dict[str, Any] | None = None,
                **kw: Any) -> dict[str, Any]:
            sent.append(dict(args or {}))
            return call(self, command, args, **kw)
        monkeypatch.setattr(ProvisionClient, "call", spy)
        with pytest.raises((HavenError, UsageError)) as exc:
            provision(k.port, cred, approvals=file, hub_urls=[url], ask_code=ask, note=note,
                      timeout=TIMEOUT, log_path=tmp_path / "none.log")
        k.hardware.button.button.pin.drive_high()
        k.untouched(node)
        results = [r for _, _, r in audited(k.store)]
        expect = {"no-press": "refused:no-press", "early-press": "refused:no-press",
                  "wrong-code": "refused:wrong-code", "expired": "refused:expired",
                  "revoked": "refused:revoked", "out-of-scope": "refused:out-of-scope",
                  "image-hub": "refused:wrong-hub"}
        if case == "forged-hub":  # the approval is not that hub's: the tool stops first
            assert "no approval left" in str(exc.value) and results == []
        else:
            assert results[-1] == expect[case], (results, str(exc.value))
        if case == "wrong-code":
            assert isinstance(exc.value, ProvisionRefused)
            assert "another device may stand between" in str(exc.value)
            # what was typed never left the tool: a device between would learn nothing,
            # nor get the approval, which it could take to the hub as its own
            assert all(a.get("code") in (None, "") for a in sent), sent
            assert all("approval" not in a for a in sent), sent
        if case == "revoked":  # online, the hub refuses before the kiosk is asked
            before = len(results)
            with pytest.raises(ProvisionRefused, match=r"hub refused \(revoked\)"):
                provision(k.port, cred, hub=url, site="North", ask_code=ask, note=note,
                          timeout=TIMEOUT)
            assert len(audited(k.store)) == before
            k.untouched(node)


def test_a_rogue_device_without_the_code_cannot_complete(tmp_path: Path) -> None:
    """A device on the cable runs every step with a valid-looking session, but it cannot
    see the kiosk's screen: the code it sends is a guess, and the kiosk stops."""
    with served_hub(tmp_path) as (hub, url), fresh_kiosk(tmp_path) as k:
        node = k.store.node
        cred = credential(hub)  # the worst case: it even holds a credential
        rogue = ProvisionClient(k.port, cred, timeout=TIMEOUT, on_note=k.press_on_note())
        try:
            session = rogue.open_session()
            nonce = bytes(32)
            began = rogue.call("provision-begin", {
                "cert": cred.certificate, "hub": cred.hub_ed25519, "site": "North",
                "commit": sas.commit(session, nonce), "time": wall_ms()},
                timeout=WINDOW + 5)
            # a nonce other than the one committed to (grinding the code) is refused
            with pytest.raises(CommandRefused, match="bad-commit"):
                rogue.call("provision-reveal", {"nonce": bytes([1]) * 32})
            with pytest.raises(CommandRefused, match="no-provisioning"):
                rogue.call("provision-confirm", {"code": "000000"})
            rogue.call("provision-begin", {
                "cert": cred.certificate, "hub": cred.hub_ed25519, "site": "North",
                "commit": sas.commit(session, nonce), "time": wall_ms()},
                timeout=WINDOW + 5)
            rogue.call("provision-reveal", {"nonce": nonce})
            shown = k.shown[-1]
            assert shown is not None and began["nonce"] and k.restarts == []
            guess = "000000" if shown != "000000" else "000001"
            with pytest.raises(CommandRefused, match="wrong-code"):
                rogue.call("provision-confirm", {"code": guess})
            with pytest.raises(CommandRefused, match="no-provisioning"):
                rogue.call("provision-install", {"cert": b"x"})
        finally:
            rogue.close()
        k.untouched(node)
        assert [r for _, w, r in audited(k.store) if w == "provision.confirm"] == [
            "refused:wrong-code"]


def test_presence_is_a_press_begun_in_the_window_and_held() -> None:
    t = [0.0]

    def clock() -> float:
        return t[0]

    def run(states: Callable[[float], bool]) -> str:
        t[0] = 0.0

        def pressed() -> bool:
            t[0] += 0.1
            return states(t[0])
        return await_hold(pressed, window=5.0, hold=1.0, clock=clock, poll=0).result

    assert run(lambda now: 1.0 <= now <= 3.0) == "held"
    assert run(lambda now: False) == "no-press"
    assert run(lambda now: 1.0 <= now <= 1.5) == "too-short"
    assert run(lambda now: True) == "no-press"  # down before the window: never armed
    assert run(lambda now: now <= 0.5 or now >= 2.0) == "held"  # released, pressed again
    assert run(lambda now: now >= 4.5) == "too-short"  # the window closes mid-press
    assert await_hold(None).result == "no-button"


def test_the_runtimes_provisioner_shows_the_code_on_the_page(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    clock_set: list[float] = []
    monkeypatch.setattr("device.console.runtime_env._set_wall", clock_set.append)
    live = LiveStatus()
    seen: list[str | None] = []
    real = live.show_provision_code

    def show(code: str | None) -> None:
        seen.append(code)
        real(code)
    monkeypatch.setattr(live, "show_provision_code", show)
    runtime = SimpleNamespace(cfg=SimpleNamespace(provision_window=WINDOW,
                                                  provision_hold=HOLD, hub_key=None), live=live)
    with served_hub(tmp_path) as (hub, url), fresh_kiosk(tmp_path, runtime=runtime) as k:
        page: list[str] = []

        def read_page(ours: str) -> str:
            page.append(live.snapshot()["provision_code"])
            return page[-1]
        provision(k.port, credential(hub), hub=url, site="North", ask_code=read_page,
                  note=k.press_on_note(), timeout=TIMEOUT)
        assert len(page[0]) == 6 and seen[-2:] == [page[0], None]
        assert live.snapshot()["provision_code"] is None  # gone once provisioned
        assert len(clock_set) == 1 and (k.store.data / enrol.CERT).exists()


def test_the_real_runtime_is_provisioned_offline_then_enrols_at_its_first_sync(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``haven-kiosk run`` on a fresh kiosk with a console: provisioned from the tool (the
    code read from its page, its button pressed), it restarts to sync with the hub URL it
    was given, and its first sync makes it an enrolled kiosk."""
    import time

    from device.config import KioskConfig
    from device.runtime import Runtime

    from .test_ui_helpers import runtime_in_thread

    monkeypatch.setattr("device.console.runtime_env._set_wall", lambda when: None)
    data, toml = tmp_path / "kiosk", tmp_path / "kiosk.toml"
    init_store(data, "Unset").close()
    bound = 20.0
    with served_hub(tmp_path) as (hub, url):
        file = approvals(hub, tmp_path / "north.approvals")
        cred = credential(hub)
        cable = Cable()
        cfg = KioskConfig(data=data, ui="127.0.0.1:0", retry_max=0.5, hardware="simulated",
                          console=cable.a, console_baud=1_000_000, provision_hold=HOLD,
                          provision_window=WINDOW, hub_key=hub.x_public.hex())  # its image
        rt = Runtime(cfg, hardware=hw.Hardware(pin_factory=MockFactory()))
        rt.config_file = toml

        def press() -> None:
            assert rt.hardware is not None
            pin = rt.hardware.button.button.pin
            pin.drive_low()
            threading.Event().wait(HOLD + 0.15)
            pin.drive_high()

        def technician_at_the_port() -> dict[str, Any]:
            return {"out": provision(
                cable.b, cred, approvals=file, hub_urls=[url], timeout=TIMEOUT,
                ask_code=lambda ours: rt.live.snapshot()["provision_code"] or "",
                note=lambda text: threading.Thread(target=press, daemon=True).start(),
                log_path=tmp_path / "none.log")}

        try:  # ends with the restart asked
            got = run_beside_technician(rt, technician_at_the_port, bound)
        finally:
            cable.close()
        assert "failed" not in got, got
        assert rt.restart_asked and f'hub = ["{url}"]' in toml.read_text()
        assert rt.live.snapshot()["provision_code"] is None
        with Store(data) as store:  # each step once, by the credential's serial
            assert [(w, what) for w, what, _ in audited(store)] == [
                ("1", "provision.presence"), ("1", "provision.code"),
                ("1", "provision.approval")]
        # Started again, as systemd would, with the configuration it was given.
        again = Runtime(KioskConfig(data=data, ui="127.0.0.1:0", retry_max=0.5,
                                    interval=0.5, hardware="simulated", hub=[url]),
                        hardware=hw.Hardware(pin_factory=MockFactory()))
        with runtime_in_thread(again):
            end = time.monotonic() + bound
            while not (data / enrol.CERT).exists():
                assert time.monotonic() < end, "the first sync did not enrol the kiosk"
                time.sleep(0.05)
        cert = enrol.load(data).cert
        assert cert.device_id == got["out"].kiosk and hub.store.device(cert.device_id)
