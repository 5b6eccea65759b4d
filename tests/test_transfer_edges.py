"""``haven send`` / ``haven receive`` at their edges: both ends agree on what was reused,
progress shows off a terminal, a full disk and names with bidi or control characters are
refused in one line that names the side, and no part file is left behind.

The transfers run as subprocesses over ``tools/linkemu``'s ptys; the full disk is a real
tmpfs mounted for the test (root; skipped elsewhere, see ``conftest.require``)."""

from __future__ import annotations

import errno
import io
import random
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from host.progress import Progress
from protocol import messages
from protocol.transfer import MemoryStore, Receiver, TransferAborted
from tests.conftest import small_disk
from tools.benchmarks._link import Emulator, emulator

from .test_send_receive import finish, haven, random_file, transfer, wait_for_chunks

BOUND = 20.0
BIDI = [*range(0x202A, 0x202F), *range(0x2066, 0x206A)]


@pytest.fixture
def fast_emu(tmp_path: Path) -> Iterator[Emulator]:
    with emulator("serial", ["--rate", "1000000", "--seed", "5"],
                  tmp_path / "emu-stats.json") as e:
        yield e


def fill(disk: Path) -> None:
    with open(disk / "filler", "ab", buffering=0) as f:
        try:
            while True:
                f.write(b"\xa5" * 4096)
        except OSError as exc:
            assert exc.errno == errno.ENOSPC, exc


def one_line(err: str, prog: str) -> str:
    assert "Traceback" not in err, err
    lines = [x for x in err.splitlines() if x.startswith(prog + ":")]
    assert len(lines) == 1, err
    return lines[0]


def parts(out: Path) -> list[Path]:
    incoming = out / ".haven" / "incoming"
    return list(incoming.iterdir()) if incoming.exists() else []


def test_both_ends_agree_on_reuse_and_show_progress_off_a_terminal(
        fast_emu: Emulator, tmp_path: Path) -> None:
    block = random.Random(4).randbytes(96 * 1024)  # repeated: one hash, several entries
    data = random.Random(5).randbytes(200 * 1024) + block * 3 + random.Random(6).randbytes(9000)
    src = tmp_path / "scan.bin"
    src.write_bytes(data)
    out = tmp_path / "new" / "folder"  # made by haven receive
    (s_rc, s, s_err), (r_rc, r, r_err) = transfer(fast_emu, [src], out)
    assert (s_rc, r_rc) == (0, 0), (s_err, r_err)
    assert (out / "scan.bin").read_bytes() == data
    assert s is not None and r is not None
    assert (s["chunks"], s["chunks_reused"]) == (r["chunks"], r["chunks_reused"])
    for err in (s_err, r_err):  # stderr is a pipe here: plain lines, the last at 100 %
        assert "scan.bin: 100.0%" in err and "\r" not in err, err

    data = data[:1000] + b"changed" + data[1007:]  # a new version: one chunk differs
    src.write_bytes(data)
    (s_rc, s, s_err), (r_rc, r, r_err) = transfer(fast_emu, [src], out)
    assert (s_rc, r_rc) == (0, 0), (s_err, r_err)
    assert s is not None and r is not None
    assert s["chunks"] == r["chunks"] and s["chunks_reused"] == r["chunks_reused"]
    assert 0 < s["chunks_reused"] < s["chunks"]
    assert r["chunks_moved"] + r["chunks_reused"] <= r["chunks"]


def test_progress_off_a_terminal_is_a_line_every_few_seconds() -> None:
    out = io.StringIO()
    p = Progress(out, tty=False, every=0.2)
    p.update("a.bin", 0, 100)  # a file starts: a line at once
    t0 = time.monotonic()
    while time.monotonic() - t0 < 0.5:
        p.update("a.bin", 50, 100)
        time.sleep(0.01)
    p.update("a.bin", 100, 100, force=True)
    lines = out.getvalue().splitlines()
    assert lines[0].startswith("a.bin:   0.0%") and lines[-1].startswith("a.bin: 100.0%")
    assert 3 <= len(lines) <= 5, lines  # not one per update (about 50 of them)


def test_an_offer_larger_than_the_free_space_is_refused_before_a_byte_is_written(
        fast_emu: Emulator, tmp_path: Path) -> None:
    src = random_file(tmp_path / "big.bin", 6 * 1024 * 1024, 11)
    with small_disk(tmp_path / "disk", "4m") as disk:
        out = disk / "in"
        (s_rc, _, s_err), (r_rc, _, r_err) = transfer(fast_emu, [src], out)
        assert (s_rc, r_rc) == (1, 1), (s_err, r_err)
        sent = one_line(s_err, "haven send")
        assert "big.bin: refused by the receiver: no-space" in sent and "free in" in sent
        assert "big.bin: refused here (receiver): no-space" in one_line(r_err, "haven receive")
        assert parts(out) == [] and not (out / "big.bin").exists()


def test_a_disk_that_fills_during_the_transfer_fails_cleanly_on_both_ends(
        fast_emu: Emulator, tmp_path: Path) -> None:
    src = random_file(tmp_path / "scan.bin", 2 * 1024 * 1024, 12)
    with small_disk(tmp_path / "disk", "4m") as disk:
        out = disk / "in"
        recv = haven("receive", fast_emu.endpoints["b"], out, "--timeout", "30")
        send = haven("send", fast_emu.endpoints["a"], src, "--timeout", "30")
        wait_for_chunks(out, 1, recv, send)
        fill(disk)  # another program takes the rest of the disk
        (s_rc, _, s_err), (r_rc, _, r_err) = finish(send), finish(recv)
        assert (s_rc, r_rc) == (1, 1), (s_err, r_err)
        assert "scan.bin: refused by the receiver: no-space" in one_line(s_err, "haven send")
        line = one_line(r_err, "haven receive")
        assert "refused here (receiver): no-space" in line and "disk is full" in line
        assert parts(out) == [] and not (out / "scan.bin").exists()


@pytest.mark.parametrize("char", [*map(chr, BIDI), "\x01", "\x7f", "\x85", "\x9b"])
def test_names_with_bidi_or_control_characters_are_refused_by_the_receiver(char: str) -> None:
    r = Receiver(MemoryStore())
    name = f"invoice{char}fdp.exe"
    events = r.receive(messages.make("xfer-offer", xfer=0, object=b"\x00" * 32, size=1,
                                     filename=name, count=1))
    assert events == [r.failure] and isinstance(r.failure, TransferAborted)
    assert r.failure.reason == "bad-name" and not r.failure.remote
    abort = messages.decode(r.messages_to_send()[0])
    assert abort.name == "xfer-abort" and abort.get("reason") == "bad-name"
    assert char not in abort.get("detail")  # the name is shown escaped


def test_the_sender_refuses_a_bidi_name_before_opening_the_port(tmp_path: Path) -> None:
    src = tmp_path / "invoice\u202efdp.exe"
    src.write_bytes(b"MZ")
    rc, _, err = finish(haven("send", tmp_path / "no-such-port", src))
    assert rc == 2
    line = one_line(err, "haven send")
    assert "refused here (sender)" in line and "\\u202e" in line and "\u202e" not in line
