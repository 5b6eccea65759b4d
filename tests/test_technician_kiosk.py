"""A kiosk's side of technicians: trusted time (never its own clock) and the Haven SMP
group's exchange, with real signatures, a real hub's keys and the kiosk's audit chain."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from device import audit, enrol
from device.console.groups import (
    EACCESSDENIED,
    EBADSTATE,
    ENOENT,
    HAVEN,
    REGISTRY,
    Call,
    OpenOnly,
    Port,
    Registry,
    SmpError,
    dispatch,
)
from device.store import Store, init_store
from device.sync import engine
from device.sync.state import SyncState
from device.tech import access, smp_group
from device.tech.trusted_time import SIGNED, SYNC, Boot, TrustedClock
from host.hub import technician
from host.hub.hub import Hub, init_hub
from protocol import messages
from protocol.sync import credential as c
from protocol.sync.batches import GENESIS
from protocol.sync.conversation import KioskSync

HOUR = c.HOUR_MS
T0 = 1_767_225_600_000  #: the hub's time in these tests: 2026-01-01
Y2099 = 4_070_908_800_000  #: what a kiosk with no battery clock may believe


@dataclass
class FakeBoot:
    id: str = "boot-1"
    ms: int = 10_000

    def __call__(self) -> Boot:
        return Boot(self.id, self.ms)


@dataclass
class Kiosk:
    store: Store
    hub: Hub
    tech: access.Technicians
    boot: FakeBoot
    registry: Registry
    pressed: list[bool]

    def call(self, port: Port, command: int, op: str, body: Mapping[str, Any] | None = None,
             group: int = HAVEN) -> Mapping[str, Any]:
        return dispatch(self.registry, Call(group, command, op, body or {}, port,  # type: ignore[arg-type]
                                            SimpleNamespace(technicians=lambda: self.tech)))

    def credential(self, **kw: Any) -> c.CredentialFile:
        kw.setdefault("sites", ["North"])
        _, doc = technician.issue(self.hub, name=kw.pop("name", "Amina"), now_ms=kw.pop(
            "now_ms", T0), **kw)
        return c.load_file(doc)

    def login(self, port: Port, cred: c.CredentialFile, **extra: Any) -> Mapping[str, Any]:
        ch = self.call(port, smp_group.CHALLENGE, "read")
        sig = c.sign_auth(cred.key, ch["nonce"], ch["device"], ch["token"])
        return self.call(port, smp_group.AUTH, "write",
                         {"cert": cred.certificate, "sig": sig, **extra})

    def audited(self) -> list[tuple[str, str, str]]:
        return [(e["who"], e["what"], e["result"]) for e in audit.entries(self.store)]


@pytest.fixture
def kiosk(tmp_path: Path) -> Iterator[Kiosk]:
    init_hub(tmp_path / "hub")
    hub = Hub(tmp_path / "hub")
    store = init_store(tmp_path / "kiosk", "North", "A")
    enrol.install(store, hub.enroll(enrol.write_request(store).read_bytes(), now_ms=T0))
    pressed = [False]
    tech = access.for_kiosk(store, presence=lambda: pressed[0])
    boot = FakeBoot()
    tech.clock = TrustedClock(store.data, boot=boot)
    registry = Registry()
    for cmd in REGISTRY.commands():
        if cmd.group == HAVEN:
            registry.register(cmd.group, cmd.command, op=cmd.op, open_=cmd.open_)(cmd.handler)
    registry.register(0, access.OS_RESET, op="write")(lambda call: {"restarting": True})
    registry.register(8, 0, op="write")(lambda call: {"off": 0})
    try:
        yield Kiosk(store, hub, tech, boot, registry, pressed)
    finally:
        store.close()
        hub.close()


def refused(rc: int, fn: Any, *args: Any, **kw: Any) -> str:
    with pytest.raises(SmpError) as caught:
        fn(*args, **kw)
    assert caught.value.rc == rc, caught.value.reason
    return caught.value.reason


def test_a_kiosk_booted_into_2099_accepts_a_valid_credential(
        kiosk: Kiosk, monkeypatch: pytest.MonkeyPatch) -> None:
    # The hub's welcome reaches a kiosk whose own clock says 2099: its trusted time is
    # the hub's, by BOOTTIME, whatever its wall clock says.
    monkeypatch.setattr(engine, "wall_ms", lambda: Y2099)
    state = SyncState(kiosk.store.data)
    try:
        ident = enrol.load(kiosk.store.data)
        role = KioskSync(engine.KioskLedger(kiosk.store, state, engine.Summary()),
                         cert=ident.cert.raw, device=ident.cert.device_id, key=ident.ed_key)
        role.receive(messages.make("sync-welcome", time=T0 + HOUR, vv={}, seq=0,
                                   hash=GENESIS), Y2099)
    finally:
        state.close()
    now = TrustedClock(kiosk.store.data).now()  # this process's real boot
    assert now is not None and now.source == SYNC and now.exact
    assert T0 + HOUR <= now.ms < T0 + HOUR + 60_000

    kiosk.tech.clock = TrustedClock(kiosk.store.data)
    port = Port()
    cred = kiosk.credential(hours=24)
    answer = kiosk.login(port, cred)
    assert answer["serial"] == c.read_technician(cred.certificate, cred.hub_ed25519).serial
    assert answer["time"] == "sync time"
    assert kiosk.call(port, access.OS_RESET, "write", group=0) == {"restarting": True}
    assert kiosk.audited() == [(str(answer["serial"]), "tech.auth", "ok")]


def test_expired_out_of_scope_and_revoked_credentials_are_refused_and_change_nothing(
        kiosk: Kiosk) -> None:
    kiosk.tech.clock.note(SYNC, T0 + 2 * HOUR)
    cases = [(kiosk.credential(hours=1), "expired"),
             (kiosk.credential(sites=["South"]), "out-of-scope"),
             (kiosk.credential(now_ms=T0 + 3 * HOUR), "not-yet-valid")]
    revoked = kiosk.credential()
    serial = c.read_technician(revoked.certificate, revoked.hub_ed25519).serial
    listed = technician.revoke(kiosk.hub, serial, now_ms=T0 + HOUR)
    for cred, code in cases:
        port = Port()
        assert code in refused(EACCESSDENIED, kiosk.login, port, cred)
        assert isinstance(port.access, OpenOnly)
    port = Port()  # the tool brings the list that revokes its own credential: kept
    assert "revoked" in refused(EACCESSDENIED, kiosk.login, port, revoked, revocations=listed)
    assert isinstance(port.access, OpenOnly) and kiosk.tech.revocations.serials == {serial}
    assert kiosk.audited() == []
    # a credential allowed to read only may not restart the kiosk
    reader = kiosk.credential(actions=["read"])
    kiosk.login(port, reader)
    refused(EACCESSDENIED, kiosk.call, port, access.OS_RESET, "write", group=0)
    refused(EACCESSDENIED, kiosk.call, port, 0, "write", group=8)


def test_a_bound_port_ends_with_a_revocation_from_sync_or_expiry(kiosk: Kiosk) -> None:
    kiosk.tech.clock.note(SYNC, T0 + HOUR)
    cred = kiosk.credential(hours=2)
    port = Port()
    kiosk.login(port, cred)
    assert kiosk.call(port, 0, "write", group=8) == {"off": 0}
    kiosk.boot.ms += 2 * HOUR  # BOOTTIME moves on: expired now
    refused(EACCESSDENIED, kiosk.call, port, 0, "write", group=8)

    other = kiosk.credential(now_ms=T0 + 2 * HOUR)
    port = Port()
    kiosk.login(port, other)
    serial = c.read_technician(other.certificate, other.hub_ed25519).serial
    # the list arrives by another way (another port, or a sync): the binding ends
    answer = kiosk.call(Port(), smp_group.REVOCATIONS, "write",
                        {"list": technician.revoke(kiosk.hub, serial, now_ms=T0)})
    assert answer["kept"] is True
    refused(EACCESSDENIED, kiosk.call, port, 0, "write", group=8)
    # an older list never replaces it; a forged one is refused
    first = c.sign_revocations(Ed25519PrivateKey.generate(), 99, T0, [])
    refused(EACCESSDENIED, kiosk.call, Port(), smp_group.REVOCATIONS, "write", {"list": first})
    assert kiosk.tech.revocations.serials == {serial}


def test_with_no_trusted_time_only_physical_presence_lets_a_technician_in(
        kiosk: Kiosk) -> None:
    cred = kiosk.credential()
    port = Port()
    assert "presence" in refused(EBADSTATE, kiosk.login, port, cred)
    assert isinstance(port.access, OpenOnly) and kiosk.audited() == []
    kiosk.pressed[0] = True  # the service button held
    assert kiosk.login(port, cred)["time"] == "presence"
    serial = str(c.read_technician(cred.certificate, cred.hub_ed25519).serial)
    assert kiosk.audited() == [(serial, "tech.auth", "ok:presence")]
    assert kiosk.call(port, 0, "write", group=8) == {"off": 0}


def test_a_hub_signed_time_over_our_nonce_is_trusted_and_an_old_one_refused(
        kiosk: Kiosk) -> None:
    port = Port()
    old_nonce = kiosk.call(port, smp_group.TIME_NONCE, "read")["nonce"]
    old = technician.sign_time(kiosk.hub, old_nonce, now_ms=T0)
    nonce = kiosk.call(port, smp_group.TIME_NONCE, "read")["nonce"]  # replaces the first
    refused(EACCESSDENIED, kiosk.call, port, smp_group.TIME, "write", {"time": old})
    assert kiosk.tech.clock.now() is None
    nonce = kiosk.call(port, smp_group.TIME_NONCE, "read")["nonce"]
    fresh = technician.sign_time(kiosk.hub, nonce, now_ms=T0 + 5 * HOUR)
    assert kiosk.call(port, smp_group.TIME, "write", {"time": fresh}) == {"time": T0 + 5 * HOUR}
    refused(ENOENT, kiosk.call, port, smp_group.TIME, "write", {"time": fresh})  # used up
    now = kiosk.tech.clock.now()
    assert now is not None and (now.ms, now.source, now.exact) == (T0 + 5 * HOUR, SIGNED, True)
    # the later of the two sources: an older sync time does not pull it back
    kiosk.tech.clock.note(SYNC, T0 + HOUR)
    assert kiosk.tech.clock.now().source == SIGNED  # type: ignore[union-attr]
    # a signature made for another port's challenge (another token) does not verify
    cred = kiosk.credential(now_ms=T0 + 4 * HOUR)
    ch = kiosk.call(port, smp_group.CHALLENGE, "read")
    sig = c.sign_auth(cred.key, ch["nonce"], ch["device"], b"another port's token")
    assert "bad-proof" in refused(EACCESSDENIED, kiosk.call, port, smp_group.AUTH, "write",
                                  {"cert": cred.certificate, "sig": sig})


def test_after_a_reboot_the_saved_hub_time_is_a_lower_bound(kiosk: Kiosk) -> None:
    kiosk.tech.clock.note(SYNC, T0 + 10 * HOUR)
    kiosk.boot.ms += 3 * HOUR
    assert kiosk.tech.clock.checkpoint()  # moved forward within the boot: T0 + 13 h
    kiosk.boot.id, kiosk.boot.ms = "boot-2", 5_000  # a reboot: BOOTTIME starts again
    now = kiosk.tech.clock.now()
    assert now is not None and (now.ms, now.exact) == (T0 + 13 * HOUR, False)
    # expired before what the kiosk knows: refused; issued after it: accepted
    refused(EACCESSDENIED, kiosk.login, Port(), kiosk.credential(hours=12))
    port = Port()
    assert kiosk.login(port, kiosk.credential(now_ms=T0 + 20 * HOUR))["time"] == (
        "sync time, a lower bound (rebooted since)")
