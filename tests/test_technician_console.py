"""The technician's credential through the console as smpclient sees it: the Haven group's
challenge and answer over a pty cable, with a real certificate and signature, take the
port; before, and after a bad signature, the rest is refused and nothing changes."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from smp import error as smperr
from smp import message as smpmsg
from smp.error import MGMT_ERR
from smpclient import SMPClient
from smpclient.generics import error, success
from smpclient.requests import os_management as osm
from smpclient.transport.serial import SMPSerialTransport

from device import audit, enrol
from device.store import init_store
from device.tech import access
from device.tech.trusted_time import SYNC
from host.hub import technician
from host.hub.hub import Hub, init_hub
from protocol.sync import credential as c

from .console_helpers import Kiosk, console_kiosk, wait_for_reset

T0 = 1_767_225_600_000


class _HavenError1(smperr.ErrorV1):
    _GROUP_ID = 64


class _HavenError2(smperr.ErrorV2[smperr.MGMT_ERR]):
    _GROUP_ID = 64


class ChallengeResponse(smpmsg.ReadResponse):
    _GROUP_ID = 64
    _COMMAND_ID = 0
    nonce: bytes
    token: bytes
    device: str
    site: str
    time: str
    revocations: int


class Challenge(smpmsg.ReadRequest):
    _GROUP_ID = 64
    _COMMAND_ID = 0
    _Response = ChallengeResponse
    _ErrorV1 = _HavenError1
    _ErrorV2 = _HavenError2


class AuthResponse(smpmsg.WriteResponse):
    _GROUP_ID = 64
    _COMMAND_ID = 1
    serial: int
    name: str
    expires: int
    time: str


class Auth(smpmsg.WriteRequest):
    _GROUP_ID = 64
    _COMMAND_ID = 1
    _Response = AuthResponse
    _ErrorV1 = _HavenError1
    _ErrorV2 = _HavenError2
    cert: bytes
    sig: bytes


@pytest.fixture
def kiosk(tmp_path: Path) -> Iterator[tuple[Kiosk, Any, c.CredentialFile]]:
    init_hub(tmp_path / "hub")
    with Hub(tmp_path / "hub") as hub, console_kiosk(tmp_path) as k:
        store = init_store(tmp_path / "kiosk", "North", "A")
        try:
            enrol.install(store, hub.enroll(enrol.write_request(store).read_bytes(), now_ms=T0))
            tech = access.for_kiosk(store)
            tech.clock.note(SYNC, T0 + 60_000)  # as its last sync's welcome said
            k.env.technicians = lambda: tech
            _, doc = technician.issue(hub, name="Amina", sites=["North"], now_ms=T0)
            yield k, store, c.load_file(doc)
        finally:
            store.close()


def test_the_challenge_signed_with_the_technicians_key_takes_the_port(
        kiosk: tuple[Kiosk, Any, c.CredentialFile]) -> None:
    k, store, cred = kiosk
    stranger = c.CredentialFile(Ed25519PrivateKey.generate(), cred.certificate,
                                cred.hub_ed25519)

    async def run() -> dict[str, Any]:
        client = SMPClient(SMPSerialTransport(), k.port, timeout_s=3.0)
        await client.connect()
        try:
            out: dict[str, Any] = {"before": await client.request(osm.ResetWrite())}
            for who, holder in (("stolen", stranger), ("technician", cred)):
                ch = await client.request(Challenge())
                assert success(ch), ch
                sig = c.sign_auth(holder.key, ch.nonce, ch.device, ch.token)
                out[who] = await client.request(Auth(cert=holder.certificate, sig=sig))
                out[f"{who} reset"] = await client.request(osm.ResetWrite())
            return out
        finally:
            await client.disconnect()

    r = asyncio.run(run())
    for name in ("before", "stolen", "stolen reset"):
        assert error(r[name]) and r[name].rc == MGMT_ERR.EACCESSDENIED, (name, r[name])
    assert success(r["technician"]) and r["technician"].name == "Amina"
    assert r["technician"].time == "sync time"
    assert success(r["technician reset"]) and wait_for_reset(k) == [1]
    entries = audit.entries(store)
    assert [(e["who"], e["what"], e["result"]) for e in entries] == [
        (str(r["technician"].serial), "tech.auth", "ok")]
