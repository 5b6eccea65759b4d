"""``haven send`` / ``haven receive`` over real ptys through ``tools/linkemu``.

Each test starts the link emulator as a subprocess (two pty pairs, a noisy
line) and runs the two commands as subprocesses on its two ends, as a user
would. Progress is read from the receiver's index (``DIR/.haven/index.db``),
so kills land mid-transfer by what has arrived, not by the clock. Every wait
has a deadline; nothing asserts a time.
"""

from __future__ import annotations

import json
import os
import random
import selectors
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tools.benchmarks._link import Emulator, emulator

ROOT = Path(__file__).resolve().parents[1]
RUN_TIMEOUT = 60.0  # seconds any one command may take before the test fails
NOISE = ["--corrupt", "1e-4", "--loss", "0.005", "--dup", "0.002"]


@pytest.fixture
def emu(tmp_path: Path) -> Iterator[Emulator]:
    with emulator("serial", ["--rate", "200000", *NOISE, "--seed", "7"],
                  tmp_path / "emu-stats.json") as e:
        yield e


@pytest.fixture
def slow_emu(tmp_path: Path) -> Iterator[Emulator]:
    """A slower line, so a kill lands while the file is still crossing."""
    with emulator("serial", ["--rate", "100000", *NOISE, "--seed", "8"],
                  tmp_path / "emu-stats.json") as e:
        yield e


def haven(*args: str | Path) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "host.cli", *map(str, args)], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(proc: subprocess.Popen[str]) -> tuple[int, dict[str, Any] | None, str]:
    try:
        out, err = proc.communicate(timeout=RUN_TIMEOUT)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        raise AssertionError(f"haven did not finish: {err}") from None
    summary = json.loads(out) if out.startswith("{") else None
    return proc.returncode, summary, err


def random_file(path: Path, size: int, seed: int) -> Path:
    path.write_bytes(random.Random(seed).randbytes(size))
    return path


def stored_chunks(directory: Path) -> int:
    db = directory / ".haven" / "index.db"
    if not db.exists():
        return 0
    try:
        with sqlite3.connect(db, timeout=1) as conn:
            row = conn.execute("SELECT count(*) FROM chunks WHERE path LIKE '.haven/%'")
            return int(row.fetchone()[0])
    except sqlite3.OperationalError:
        return 0


def wait_for_chunks(directory: Path, count: int, *procs: subprocess.Popen[str]) -> None:
    deadline = time.monotonic() + RUN_TIMEOUT
    while stored_chunks(directory) < count:
        assert time.monotonic() < deadline, "no progress"
        assert all(p.poll() is None for p in procs), "a side exited early"
        time.sleep(0.05)


def kill9(proc: subprocess.Popen[str]) -> None:
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=10)


def transfer(emu: Emulator, files: list[Path], out: Path, *extra: str,
             send_extra: tuple[str, ...] = (), recv_extra: tuple[str, ...] = ()
             ) -> tuple[tuple[int, Any, str], tuple[int, Any, str]]:
    recv = haven("receive", emu.endpoints["b"], out, "--json", "--timeout", "30", *extra,
                 *recv_extra)
    send = haven("send", emu.endpoints["a"], *files, "--json", "--timeout", "30", *extra,
                 *send_extra)
    return finish(send), finish(recv)


def test_a_file_arrives_intact(emu: Emulator, tmp_path: Path) -> None:
    src = random_file(tmp_path / "scan.bin", 512 * 1024, 1)
    out = tmp_path / "out"
    out.mkdir()
    (s_rc, s, s_err), (r_rc, r, r_err) = transfer(emu, [src], out)
    assert (s_rc, r_rc) == (0, 0), (s_err, r_err)
    assert (out / "scan.bin").read_bytes() == src.read_bytes()
    assert s is not None and r is not None
    assert s["file_bytes"] == r["file_bytes"] == src.stat().st_size
    assert s["chunk_bytes_moved"] == src.stat().st_size
    assert s["wire_bytes_sent"] > src.stat().st_size
    assert r["wire_bytes_received"] <= s["wire_bytes_sent"]
    assert s["files"][0]["sha256"] == r["files"][0]["sha256"]
    assert not list((out / ".haven" / "incoming").iterdir())  # no part file left


def test_several_files_and_a_new_version_sends_only_the_changes(
        emu: Emulator, tmp_path: Path) -> None:
    a = random_file(tmp_path / "a.pdf", 300 * 1024, 2)
    b = random_file(tmp_path / "b.pdf", 100 * 1024, 3)
    empty = tmp_path / "empty.txt"
    empty.write_bytes(b"")
    out = tmp_path / "out"
    out.mkdir()
    (s_rc, _, s_err), (r_rc, r, r_err) = transfer(emu, [a, b, empty], out)
    assert (s_rc, r_rc) == (0, 0), (s_err, r_err)
    for f in (a, b, empty):
        assert (out / f.name).read_bytes() == f.read_bytes()
    assert r is not None and [f["name"] for f in r["files"]] == ["a.pdf", "b.pdf", "empty.txt"]

    data = bytearray(a.read_bytes())  # a new version: 2 KiB changed in the middle
    data[150_000:152_048] = random.Random(9).randbytes(2048)
    a.write_bytes(bytes(data))
    (s_rc, s, s_err), (r_rc, r, r_err) = transfer(emu, [a], out)
    assert (s_rc, r_rc) == (0, 0), (s_err, r_err)
    assert (out / "a.pdf").read_bytes() == bytes(data)
    assert s is not None and r is not None
    assert 0 < s["chunk_bytes_moved"] <= 3 * 64 * 1024  # a couple of chunks, not the file
    assert r["chunks_reused"] >= r["chunks"] - 3
    assert s["wire_bytes_sent"] < len(data) // 2


def test_kill_9_either_side_then_rerun_sends_only_what_is_missing(
        slow_emu: Emulator, tmp_path: Path) -> None:
    src = random_file(tmp_path / "xray.dcm", 1024 * 1024, 4)
    out = tmp_path / "out"
    out.mkdir()
    b, a = slow_emu.endpoints["b"], slow_emu.endpoints["a"]
    args = ("--json", "--timeout", "30")

    # The sender dies first, then the receiver.
    recv = haven("receive", b, out, *args)
    send = haven("send", a, src, *args)
    wait_for_chunks(out, 25, recv, send)
    kill9(send)
    kill9(recv)
    first = stored_chunks(out)
    assert first > 0

    # Again: now the receiver dies first, with more of the file in.
    recv = haven("receive", b, out, *args)
    send = haven("send", a, src, *args)
    wait_for_chunks(out, first + 25, recv, send)
    kill9(recv)
    kill9(send)
    second = stored_chunks(out)
    assert not (out / "xray.dcm").exists()

    (s_rc, s, s_err), (r_rc, r, r_err) = transfer(slow_emu, [src], out)
    assert (s_rc, r_rc) == (0, 0), (s_err, r_err)
    assert (out / "xray.dcm").read_bytes() == src.read_bytes()
    assert s is not None and r is not None
    # Only the missing chunks crossed: what the receiver had, it kept.
    assert r["chunks_reused"] >= second - 1
    assert r["chunks_reused"] + r["chunks_moved"] == r["chunks"]
    assert s["chunks_moved"] == r["chunks_moved"]
    assert s["chunk_bytes_moved"] == r["chunk_bytes_moved"] < src.stat().st_size
    assert s["wire_bytes_sent"] < src.stat().st_size


def test_a_restarted_sender_continues_with_the_receiver_still_running(
        emu: Emulator, tmp_path: Path) -> None:
    src = random_file(tmp_path / "lab.bin", 1024 * 1024, 5)
    out = tmp_path / "out"
    out.mkdir()
    recv = haven("receive", emu.endpoints["b"], out, "--json", "--timeout", "40")
    send = haven("send", emu.endpoints["a"], src, "--json")
    wait_for_chunks(out, 20, recv, send)
    kill9(send)
    s_rc, s, s_err = finish(haven("send", emu.endpoints["a"], src, "--json", "--timeout", "40"))
    r_rc, r, r_err = finish(recv)
    assert (s_rc, r_rc) == (0, 0), (s_err, r_err)
    assert (out / "lab.bin").read_bytes() == src.read_bytes()
    assert s is not None and r is not None
    assert r["resets"] >= 1  # the receiver gave up on the dead session and took the new one
    assert s["chunk_bytes_moved"] < src.stat().st_size


def tcp_bridge() -> tuple[int, int]:
    """Two listening ports on 127.0.0.1; the first client of each is joined to the other's."""
    listeners = [socket.create_server(("127.0.0.1", 0)) for _ in range(2)]

    def pump() -> None:
        conns = [s.accept()[0] for s in listeners]
        sel = selectors.DefaultSelector()
        for i, c in enumerate(conns):
            sel.register(c, selectors.EVENT_READ, conns[1 - i])
        try:
            while True:
                for key, _ in sel.select(RUN_TIMEOUT):
                    data = key.fileobj.recv(65536)  # type: ignore[union-attr]
                    if not data:
                        return
                    key.data.sendall(data)
        finally:
            for c in (*conns, *listeners):
                c.close()

    threading.Thread(target=pump, daemon=True).start()
    return listeners[0].getsockname()[1], listeners[1].getsockname()[1]


def test_tcp_stream_mode(tmp_path: Path) -> None:
    src = random_file(tmp_path / "big.bin", 256 * 1024, 8)
    out = tmp_path / "out"
    out.mkdir()
    port_r, port_s = tcp_bridge()
    recv = haven("receive", f"socket://127.0.0.1:{port_r}", out, "--tcp", "--json",
                 "--timeout", "20")
    send = haven("send", f"socket://127.0.0.1:{port_s}", src, "--tcp", "--json",
                 "--timeout", "20")
    (s_rc, s, s_err), (r_rc, _, r_err) = finish(send), finish(recv)
    assert (s_rc, r_rc) == (0, 0), (s_err, r_err)
    assert (out / "big.bin").read_bytes() == src.read_bytes()
    assert s is not None and s["retransmitted_bytes"] == 0


def keys(tmp_path: Path, *names: str) -> dict[str, Path]:
    paths = {}
    for name in names:
        path = tmp_path / f"{name}.key"
        proc = haven("keygen", path)
        rc, _, err = finish(proc)
        assert rc == 0, err
        assert path.stat().st_mode & 0o777 == 0o600
        assert len(Path(f"{path}.pub").read_text().strip()) == 64
        paths[name] = path
    return paths


def test_keys_authenticate_and_a_wrong_peer_key_is_refused(
        emu: Emulator, tmp_path: Path) -> None:
    k = keys(tmp_path, "hub", "kiosk", "stranger")
    src = random_file(tmp_path / "note.txt", 20 * 1024, 6)
    out = tmp_path / "out"
    out.mkdir()
    pub = {name: Path(f"{path}.pub") for name, path in k.items()}

    # Right keys: the transfer goes through, each side names the other.
    (s_rc, s, s_err), (r_rc, r, r_err) = transfer(
        emu, [src], out, send_extra=("--key", str(k["kiosk"]), "--peer-key", str(pub["hub"])),
        recv_extra=("--key", str(k["hub"]), "--peer-key", str(pub["kiosk"])))
    assert (s_rc, r_rc) == (0, 0), (s_err, r_err)
    assert s is not None and r is not None
    assert s["peer_key"] == pub["hub"].read_text().strip()
    assert r["peer_key"] == pub["kiosk"].read_text().strip()

    # The sender expects another receiver: it refuses, the receiver hears nothing.
    (s_rc, s, s_err), (r_rc, r, r_err) = transfer(
        emu, [src], out, "--timeout", "5",
        send_extra=("--key", str(k["kiosk"]), "--peer-key", str(pub["stranger"])),
        recv_extra=("--key", str(k["hub"])))
    assert s_rc == 4 and "refused" in s_err, s_err
    assert r_rc == 3 and "no authenticated frame" in r_err, r_err

    # The receiver expects another sender: it refuses.
    (s_rc, s, s_err), (r_rc, r, r_err) = transfer(
        emu, [src], out, "--timeout", "5",
        send_extra=("--key", str(k["stranger"])),
        recv_extra=("--key", str(k["hub"]), "--peer-key", str(pub["kiosk"])))
    assert r_rc == 4 and "refused" in r_err, r_err
    assert s_rc == 4 and "not accepted" in s_err, s_err  # told why, not left to time out


def test_clear_errors_for_missing_files_ports_and_keys(tmp_path: Path) -> None:
    src = random_file(tmp_path / "x.bin", 1000, 7)
    rc, _, err = finish(haven("send", "loop://", tmp_path / "missing.bin"))
    assert rc == 2 and "missing.bin: no such file" in err
    rc, _, err = finish(haven("send", tmp_path / "no-such-tty", src))
    assert rc == 2 and "cannot open port" in err
    rc, _, err = finish(haven("receive", "loop://", src))  # a file, not a folder
    assert rc == 2 and "not a directory" in err
    rc, _, err = finish(haven("receive", "loop://", src / "sub"))
    assert rc == 2 and "cannot create" in err
    for _, _, err in [finish(haven("send", "loop://", tmp_path / "missing.bin")),
                      finish(haven("receive", "loop://", src))]:
        assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    rc, _, err = finish(haven("send", "loop://", src, "--peer-key", "00" * 32))
    assert rc == 2 and "--peer-key needs --key" in err
    not_a_key = tmp_path / "not-a-key"
    not_a_key.write_bytes(b"hello")
    os.chmod(not_a_key, 0o600)  # private, so what is wrong with it is that it is no key
    rc, _, err = finish(haven("send", "loop://", src, "--key", not_a_key))
    assert rc == 2 and "not a PEM private key" in err
    key = tmp_path / "k"
    assert finish(haven("keygen", key))[0] == 0
    rc, _, err = finish(haven("keygen", key))
    assert rc == 2 and "not overwriting" in err
    os.chmod(key, 0o644)
    rc, _, err = finish(haven("send", "loop://", src, "--key", key))
    assert rc == 2 and "readable by others" in err


def test_the_store_refuses_names_that_are_not_plain(tmp_path: Path) -> None:
    from host.errors import UsageError
    from host.transfer_store import DirStore
    from protocol.errors import LocalProtocolError

    store = DirStore(tmp_path)
    try:
        for name in ("../evil", "a/b", "..", ".", "c\\d"):
            with pytest.raises(LocalProtocolError):
                store.begin(b"\x00" * 32, name, 10)
        with pytest.raises(UsageError):
            store.begin(b"\x00" * 32, ".haven", 10)
    finally:
        store.close()


def test_every_command_has_help() -> None:
    for command in ("send", "receive", "keygen"):
        proc = subprocess.run([sys.executable, "-m", "host.cli", command, "--help"], cwd=ROOT,
                              capture_output=True, text=True, timeout=RUN_TIMEOUT)
        assert proc.returncode == 0 and "usage: haven" in proc.stdout
