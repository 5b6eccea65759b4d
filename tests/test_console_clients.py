"""The technician's console as the SMP clients technicians use see it: smpclient (the
library) and smpmgr (its command line, as a subprocess) on one end of a pty cable, the
console server on the other. Open commands answer without a credential; everything else
is refused with SMP's own codes and changes nothing; with the port bound (a stand-in
for the credential, which device/tech brings) files go both ways, the clock is set and
a reset calls the runtime's restart hook."""

from __future__ import annotations

import asyncio
import hashlib
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from smp import error as smperr
from smp import message as smpmsg
from smp.error import MGMT_ERR
from smpclient import SMPClient
from smpclient.generics import error, error_v2, success
from smpclient.requests import file_management as fs
from smpclient.requests import os_management as osm
from smpclient.requests import shell_management as shell
from smpclient.requests import statistics_management as stat
from smpclient.transport.serial import SMPSerialTransport

from .console_helpers import Kiosk, console_kiosk, wait_for_reset

SMPMGR = Path(sys.executable).with_name("smpmgr")


# smp has no model of Mynewt's Log group (4); these are its show request and answer.
class _LogError1(smperr.ErrorV1):
    _GROUP_ID = 4


class _LogError2(smperr.ErrorV2[smperr.MGMT_ERR]):
    _GROUP_ID = 4


class ShowLogResponse(smpmsg.ReadResponse):
    _GROUP_ID = 4
    _COMMAND_ID = 0
    next_index: int
    logs: list[dict[str, Any]]


class ShowLog(smpmsg.ReadRequest):
    _GROUP_ID = 4
    _COMMAND_ID = 0
    _Response = ShowLogResponse
    _ErrorV1 = _LogError1
    _ErrorV2 = _LogError2
    log_name: str | None = None
    index: int | None = None


class Everyone:
    """Stands in for a technician's credential: permits every command."""

    def permits(self, group: int, command: int, op: str) -> bool:
        return True


@pytest.fixture
def kiosk(tmp_path: Path) -> Iterator[Kiosk]:
    with console_kiosk(tmp_path) as k:
        yield k


def talk(port: str, *requests: Any, timeout: float = 3.0) -> list[Any]:
    async def run() -> list[Any]:
        client = SMPClient(SMPSerialTransport(), port, timeout_s=timeout)
        await client.connect()
        try:
            return [await client.request(r) for r in requests]
        finally:
            await client.disconnect()
    return asyncio.run(run())


def refused(r: Any) -> bool:
    return bool(error(r)) and not error_v2(r) and r.rc == MGMT_ERR.EACCESSDENIED


def test_open_commands_answer_without_a_credential(kiosk: Kiosk) -> None:
    big = "x" * 4000  # Auto mode fills the 4096-byte buffer we advertise
    echo, big_echo, params, info_a, info_sn, bad_info, when, sync, groups = talk(
        kiosk.port, osm.EchoWrite(d="hello"), osm.EchoWrite(d=big), osm.MCUMgrParametersRead(),
        osm.OSApplicationInfoRead(format="a"), osm.OSApplicationInfoRead(format="sn"),
        osm.OSApplicationInfoRead(format="sq"), osm.DateTimeRead(),
        stat.GroupData(name="sync"), stat.ListOfGroups())
    assert success(echo) and echo.r == "hello"
    assert success(big_echo) and big_echo.r == big
    assert success(params) and params.buf_size >= 4096
    assert success(info_a) and "haven-kiosk 0.1.0" in info_a.output and "kiosk-A" in info_a.output
    assert success(info_sn) and info_sn.output == f"{os.uname().sysname} kiosk-A"
    assert error_v2(bad_info) and bad_info.err.rc == 2  # OS_MGMT_ERR_INVALID_FORMAT
    assert success(when) and when.datetime[:4].isdigit() and "T" in when.datetime
    assert success(sync) and sync.fields["unsent"] == 1
    assert success(groups) and set(groups.stat_list) == {"sync", "link", "store", "health"}


def test_everything_else_is_refused_and_changes_nothing(kiosk: Kiosk) -> None:
    (kiosk.env.export_dir / "bundle.cbor").write_bytes(b"secret")
    answers = talk(
        kiosk.port, fs.FileDownload(off=0, name="bundle.cbor"),
        fs.FileUpload(off=0, data=b"evil", name="config.toml", len=4),
        fs.FileStatus(name="bundle.cbor"), fs.FileHashChecksum(name="bundle.cbor"),
        osm.DateTimeWrite(datetime="2030-01-01T00:00:00"), osm.ResetWrite(),
        osm.TaskStatisticsRead(), shell.Execute(argv=["version"]), ShowLog())
    assert all(refused(a) for a in answers), answers
    assert kiosk.resets == [] and kiosk.clock_set == []
    assert not kiosk.env.import_dir.exists() or not any(kiosk.env.import_dir.iterdir())
    assert kiosk.server.stats()["smp_refused"] == len(answers)


def test_with_access_files_clock_reset_shell_and_log(kiosk: Kiosk) -> None:
    kiosk.server.port.access = Everyone()
    data = os.urandom(20_000)
    (kiosk.env.export_dir / "logs").mkdir()
    (kiosk.env.export_dir / "logs" / "today.txt").write_bytes(data)
    upload = os.urandom(9_000)
    for i in range(5):
        kiosk.env.log.append(f"entry {i}")  # type: ignore[attr-defined]

    async def run() -> dict[str, Any]:
        client = SMPClient(SMPSerialTransport(), kiosk.port, timeout_s=3.0)
        await client.connect()
        try:
            got = await client.download_file("logs/today.txt")
            offsets = [off async for off in client.upload_file(upload, "config.toml")]
            return {
                "got": got, "offsets": offsets,
                "status": await client.request(fs.FileStatus(name="config.toml")),
                "hash": await client.request(fs.FileHashChecksum(name="logs/today.txt")),
                "types": await client.request(fs.SupportedFileHashChecksumTypes()),
                "close": await client.request(fs.FileClose()),
                "set": await client.request(osm.DateTimeWrite(datetime="2030-01-02T03:04:05")),
                "tasks": await client.request(osm.TaskStatisticsRead()),
                "version": await client.request(shell.Execute(argv=["version"])),
                "general": await client.request(shell.Execute(argv=["sh", "-c", "reboot"])),
                "log": await client.request(ShowLog(index=3)),
                "reset": await client.request(osm.ResetWrite()),
            }
        finally:
            await client.disconnect()

    r = asyncio.run(run())
    assert r["got"] == data
    assert r["offsets"][-1] == len(upload)
    assert (kiosk.env.import_dir / "config.toml").read_bytes() == upload
    assert not list(kiosk.env.import_dir.glob(".*.part"))
    assert success(r["status"]) and r["status"].len == len(upload)
    assert success(r["hash"]) and r["hash"].output == hashlib.sha256(data).digest()
    assert success(r["types"]) and "sha256" in r["types"].types
    assert success(r["close"])
    assert success(r["set"]) and kiosk.clock_set == [1893553445.0]
    assert success(r["tasks"]) and "console" in r["tasks"].tasks
    assert success(r["version"]) and r["version"].ret == 0 and "0.1.0" in r["version"].o
    assert success(r["general"]) and r["general"].ret == 127  # never a general shell
    assert success(r["log"])
    assert [e["index"] for e in r["log"].logs[0]["entries"]] == [3, 4]
    assert r["log"].next_index == 5 and r["log"].logs[0]["entries"][0]["msg"] == "entry 3"
    assert success(r["reset"]) and wait_for_reset(kiosk) == [1]


# 10,000 characters do not fit the 4096-byte buffer: tests/test_console_bad_input.py.
BAD_NAMES = ["../kiosk.db", "/etc/passwd", "a\x00b", "a\nb", "x" * 300, "ok/../../up",
             "", ".", "logs/./x", "back\\slash"]


def test_bad_names_and_a_terabyte_are_refused_before_a_byte(kiosk: Kiosk) -> None:
    kiosk.server.port.access = Everyone()
    (kiosk.env.import_dir.parent / "outside").write_bytes(b"keep")
    (kiosk.env.export_dir / "link").symlink_to(kiosk.env.import_dir.parent / "outside")
    requests: list[Any] = []
    for name in BAD_NAMES:
        requests += [fs.FileDownload(off=0, name=name), fs.FileStatus(name=name),
                     fs.FileUpload(off=0, data=b"x", name=name, len=1)]
    requests += [fs.FileDownload(off=0, name="link"),
                 fs.FileUpload(off=0, data=b"x", name="huge.bin", len=1 << 40)]
    answers = talk(kiosk.port, *requests)
    for req, a in zip(requests[:-1], answers[:-1], strict=True):
        assert error_v2(a) and a.err.rc == 2, (req, a)  # FS_MGMT_ERR_FILE_INVALID_NAME
    assert error(answers[-1]) and answers[-1].rc == MGMT_ERR.ENOMEM
    written = [p for p in kiosk.env.import_dir.parent.rglob("*")
               if p.is_file() and not p.is_symlink()]
    assert sorted(p.name for p in written) == ["outside"]


def smpmgr(port: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(SMPMGR), "--port", port, "--timeout", "3", *args],
                          capture_output=True, text=True, timeout=30,
                          env={**os.environ, "COLUMNS": "200", "NO_COLOR": "1"})


def test_smpmgr_echo_download_upload_and_refusal(kiosk: Kiosk, tmp_path: Path) -> None:
    data = os.urandom(6000)
    (kiosk.env.export_dir / "bundle.bin").write_bytes(data)
    out = smpmgr(kiosk.port, "os", "echo", "hello from smpmgr")
    assert out.returncode == 0 and "hello from smpmgr" in out.stdout, out
    refused_run = smpmgr(kiosk.port, "file", "download", "bundle.bin", str(tmp_path / "no"))
    assert not (tmp_path / "no").exists() and "EACCESSDENIED" in refused_run.stdout + \
        refused_run.stderr, refused_run
    kiosk.server.port.access = Everyone()
    got = smpmgr(kiosk.port, "file", "download", "bundle.bin", str(tmp_path / "got"))
    assert got.returncode == 0 and (tmp_path / "got").read_bytes() == data, got
    (tmp_path / "up.toml").write_bytes(b"site = 'North'\n" * 300)
    up = smpmgr(kiosk.port, "file", "upload", str(tmp_path / "up.toml"), "site.toml")
    assert up.returncode == 0, up
    assert (kiosk.env.import_dir / "site.toml").read_bytes() == b"site = 'North'\n" * 300
