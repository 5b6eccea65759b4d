"""The kiosk's journal: rotating JSON-line files bounded in size, indexes that survive a
reopen, a torn last line cut; the handler keeps templates and allowlisted fields only;
crashes keep their frames, not their messages; the Log and FS groups serve it; and bad
requests (``logs`` arguments, Log group bodies, FS names) get a clear refusal."""

from __future__ import annotations

import json
import logging
import sys
import threading
from pathlib import Path
from typing import Any

import cbor2
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from device.console.env import ConsoleEnv
from device.console.groups import FS, LOG, Port
from device.console.service import SmpService
from device.logs import crash, fields
from device.logs.command import piece
from device.logs.handler import NOT_LITERAL, JournalHandler
from device.logs.journal import Journal, index_of
from host.errors import HavenError
from host.tech.logs import check_piece
from protocol.smp import header as smph

PHI = ("Zaphira Quonsett", "QX7781234", "1931", "allergic to penicillin since the flood")


def _bytes(directory: Path) -> bytes:
    return b"".join(p.read_bytes() for p in sorted(directory.iterdir()) if p.is_file())


@pytest.fixture
def journal(tmp_path: Path) -> Any:
    j = Journal(tmp_path / "logs", 256 * 1024)
    handler = JournalHandler(j, logging.DEBUG)
    log = logging.getLogger("haven.test.logs")
    log.addHandler(handler)
    log.setLevel(logging.DEBUG)
    try:
        yield j, log
    finally:
        log.removeHandler(handler)
        j.close()


def test_rotation_bounds_the_files_and_indexes_go_on_after_a_reopen(tmp_path: Path) -> None:
    j = Journal(tmp_path / "logs", 256 * 1024)
    for n in range(6000):
        j.append({"lvl": 1, "mod": "m", "ev": "entry %d", "count": n})
    files = j.files()
    assert [p.name for p in files][-1] == "haven.log" and len(files) == 4
    assert sum(p.stat().st_size for p in files) <= 256 * 1024
    first = j.first_index
    assert first > 0 and j.next_index == 6000
    assert [index_of(line) for line in j.lines(0)] == list(range(first, 6000))
    j.close()
    with (tmp_path / "logs" / "haven.log").open("ab") as f:
        f.write(b'{"i":6000,"t":1,"lvl":1,"mo')  # a power cut in the middle of a line
    again = Journal(tmp_path / "logs", 256 * 1024)
    assert again.next_index == 6000 and again.first_index == first
    assert again.append({"ev": "after"}) == 6000
    assert [json.loads(line)["ev"] for line in again.lines(5999)] == ["entry %d", "after"]
    again.close()


def test_a_damaged_last_line_never_makes_an_index_used_again(tmp_path: Path) -> None:
    """A card can end the newest file with a line of zeros or junk after a power cut:
    the index goes on from the last entry before it, in this file or the one before."""
    j = Journal(tmp_path / "logs", 512 * 1024)
    for _ in range(40):
        j.append({"ev": "x"})
    j.close()
    for junk, after in ((b"\x00" * 300 + b"\n", 40), (b"not json\n", 41)):
        with (tmp_path / "logs" / "haven.log").open("ab") as f:
            f.write(junk)
        again = Journal(tmp_path / "logs", 512 * 1024)
        assert again.append({"ev": "after"}) == after
        again.close()
    assert [index_of(line) for line in Journal(tmp_path / "logs").lines(38)] == [38, 39, 40, 41]


_FULL_CARD = """
import resource, signal, sys
from pathlib import Path
from device.logs.journal import Journal
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit: EFBIG, part written
j = Journal(Path(sys.argv[1]))
resource.setrlimit(resource.RLIMIT_FSIZE, (1000, resource.RLIM_INFINITY))
failed = 0
for n in range(40):
    try:
        j.append({"ev": "entry %d", "count": n})
    except OSError:
        failed += 1
resource.setrlimit(resource.RLIMIT_FSIZE, (resource.RLIM_INFINITY,) * 2)
j.append({"ev": "room again"})
print(failed)
"""


def test_a_full_card_leaves_no_part_of_a_line(tmp_path: Path) -> None:
    """A write the card takes only part of (full) is cut back: every line stays an entry,
    and the indexes go on with no gap. Run apart: a file size limit stands for the card."""
    import subprocess

    done = subprocess.run([sys.executable, "-c", _FULL_CARD, str(tmp_path)], check=True,
                          capture_output=True, timeout=60, cwd=Path(__file__).parents[1])
    assert int(done.stdout) > 0
    entries = [json.loads(line) for line in (tmp_path / "haven.log").read_bytes().splitlines()]
    assert [e["i"] for e in entries] == list(range(len(entries)))
    assert entries[-1]["ev"] == "room again"


def test_a_rotation_that_fails_is_tried_again(tmp_path: Path) -> None:
    """The rotation's renames or its new file fail (a card with no room for a file, here
    a folder in the way): the journal goes on once they can be done, not dead until a
    restart."""
    j = Journal(tmp_path, 256 * 1024)
    (tmp_path / "haven.log.1").mkdir()
    (tmp_path / "haven.log.1" / "in the way").touch()
    failed = 0
    for _ in range(2500):  # past a file's 64 KiB
        try:
            j.append({"ev": "entry"})
        except OSError:
            failed += 1
    assert failed > 0
    (tmp_path / "haven.log.1" / "in the way").unlink()
    (tmp_path / "haven.log.1").rmdir()
    after = j.append({"ev": "after"})
    assert [index_of(line) for line in j.lines(0)] == list(range(after + 1))
    j.close()


@settings(max_examples=20, deadline=None)
@given(count=st.integers(0, 1500), start=st.integers(0, 1600))
def test_lines_from_any_index_are_exactly_those_kept(tmp_path_factory: Any, count: int,
                                                     start: int) -> None:
    j = Journal(tmp_path_factory.mktemp("j"), 64 * 1024)
    for n in range(count):
        j.append({"ev": "x" * (n % 50)})
    got = [index_of(line) for line in j.lines(start)]
    assert got == list(range(max(start, j.first_index), count))
    j.close()


def test_the_handler_keeps_templates_and_allowlisted_fields_only(journal: Any) -> None:
    j, log = journal
    name, passport, year, note = PHI
    log.info("checked in %s born %s", name, int(year),
             extra=fields(count=2, name=name, code="ok", outcome=note, serial=7))
    log.warning(f"patient {name} passport {passport}")
    log.error("%s", note)
    try:
        raise ValueError(f"bad passport {passport} for {name}")
    except ValueError:
        log.exception("the check-in of %s failed", name)
    entries = [json.loads(line) for line in j.lines(0)]
    assert entries[0]["ev"] == "checked in %s born %s" and entries[0]["count"] == 2
    assert entries[0]["code"] == "ok" and entries[0]["serial"] == 7
    assert entries[0]["dropped"] == 2 and "name" not in entries[0]
    assert entries[1]["ev"] == NOT_LITERAL and entries[1]["at"].startswith("tests/test_logs.py:")
    assert entries[2]["ev"] == "%s" and entries[2]["lvl"] == 3
    assert entries[3]["exc"] == "ValueError" and entries[3]["tb"][-1][0] == "tests/test_logs.py"
    data = _bytes(j.directory)
    for value in PHI:
        assert value.encode() not in data


def test_crashes_keep_type_and_frames_and_are_synced(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    j = Journal(tmp_path / "logs")
    seen: list[Any] = []
    hooks = (sys.excepthook, threading.excepthook)
    sys.excepthook = lambda kind, exc, tb: seen.append(kind)
    threading.excepthook = lambda args: seen.append(args.exc_type)
    uninstall = crash.install(j)
    try:
        def boom() -> None:
            raise RuntimeError(f"no room for {PHI[0]}")
        t = threading.Thread(target=boom, name="worker")
        t.start()
        t.join(5)
        try:
            boom()
        except RuntimeError:
            kind, exc, tb = sys.exc_info()
            assert kind is not None and exc is not None
            sys.excepthook(kind, exc, tb)
    finally:
        uninstall()
        sys.excepthook, threading.excepthook = hooks
    entries = [json.loads(line) for line in j.lines(0)]
    assert [(e["crash"], e["exc"], e["lvl"]) for e in entries] == [
        ("thread", "RuntimeError", 4), ("process", "RuntimeError", 4)]
    assert entries[0]["tb"][-1][2] == "boom" and j.syncs >= 2
    assert seen == []  # Python's traceback (its message) never reaches stderr
    err = capsys.readouterr().err
    assert err.count("CRITICAL crash: unhandled exception crash=") == 2, err
    assert "RuntimeError" in err and "test_logs.py" in err and PHI[0] not in err
    assert PHI[0].encode() not in _bytes(j.directory)
    j.close()


class _Everyone:
    def permits(self, group: int, command: int, op: str) -> bool:
        return True


def _smp(service: SmpService, group: int, command: int, body: Any, op: int) -> Any:
    raw = body if isinstance(body, bytes) else cbor2.dumps(body)
    port = Port()
    port.access = _Everyone()
    head = smph.Header(op, smph.VERSION_2, 0, len(raw), group, 1, command)
    out, _ = service.handle(head.encode() + raw, port)
    assert out is not None
    return cbor2.loads(out[smph.SIZE:])


def test_log_and_fs_groups_serve_the_journal_and_refuse_bad_requests(tmp_path: Path) -> None:
    j = Journal(tmp_path / "logs", 128 * 1024)
    for n in range(4000):
        j.append({"lvl": 1, "mod": "m", "ev": "entry", "count": n})
    env = ConsoleEnv(export_dir=tmp_path / "export", import_dir=tmp_path / "import",
                     stats=dict, restart=lambda: None, log=j, log_dir=j.directory)
    service = SmpService(env)
    got, index = [], 3000
    while True:
        r = _smp(service, LOG, 0, {"log_name": "haven", "index": index}, smph.OP_READ)
        entries = r["logs"][0]["entries"]
        if not entries:
            break
        got += [e["index"] for e in entries]
        assert all(json.loads(e["msg"])["i"] == e["index"] for e in entries)
        index = r["next_index"]
    assert got == list(range(3000, 4000)) and r["logs"][0]["type"] == 2
    r = _smp(service, LOG, 0, {"index": 0}, smph.OP_READ)  # rotated away: from the oldest
    assert r["logs"][0]["entries"][0]["index"] == j.first_index > 0
    name = f"logs/{j.files()[0].name}"
    r = _smp(service, FS, 0, {"name": name, "off": 0}, smph.OP_READ)
    assert r["len"] == j.files()[0].stat().st_size and r["data"].startswith(b'{"i":')
    for bad in ({"index": "zero"}, {"log_name": "other"}, b"\xff\x00"):
        assert "rc" in _smp(service, LOG, 0, bad, smph.OP_READ) or \
            "err" in _smp(service, LOG, 0, bad, smph.OP_READ)
    for bad_name in ("logs/../export/x", "logs/", "logs/nothing"):
        r = _smp(service, FS, 0, {"name": bad_name, "off": 0}, smph.OP_READ)
        assert "data" not in r
    j.close()


def test_a_piece_is_checked_and_bad_pieces_are_refused(tmp_path: Path) -> None:
    import zlib

    j = Journal(tmp_path / "logs", 64 * 1024)
    for n in range(3000):
        j.append({"ev": "entry", "count": n})
    data, r = piece(j, 0, 16 * 1024)
    raw = zlib.decompress(data)
    assert r["from"] == j.first_index and r["more"] and r["raw_bytes"] == len(raw) <= 16 * 1024
    lines = check_piece(raw, 0, r)
    assert index_of(lines[-1]) == r["next"] - 1
    data2, r2 = piece(j, r["next"], 16 * 1024)
    assert r2["from"] == r["next"] and data == piece(j, 0, 16 * 1024)[0]  # the same bytes
    end, r3 = piece(j, 10_000, 16 * 1024)
    assert r3["entries"] == 0 and not r3["more"] and zlib.decompress(end) == b""
    swapped = b"".join(reversed(raw.splitlines(keepends=True)))
    deep = b"[" * 100_000 + b"]" * 100_000 + b"\n"  # JSON past the parser's depth
    for bad in (swapped, raw[:-10], b"not json\n" + raw, raw + raw[:200], deep + raw):
        with pytest.raises(HavenError):
            check_piece(bad, 0, r)
    j.close()


def test_stderr_shows_numbers_and_links_never_what_a_patient_typed() -> None:
    """``haven-kiosk run``'s stderr (kept by the service manager's journal): a log
    call's string arguments and exception messages are hidden, numbers and the link's
    address shown."""
    from device.logs.stderr import RedactedStderr

    def line(msg: str, *args: object, exc: BaseException | None = None) -> str:
        record = logging.LogRecord("haven.kiosk", logging.ERROR, __file__, 1, msg, args,
                                   None if exc is None else (type(exc), exc, None))
        return RedactedStderr().format(record)

    assert line("synced via %s: %d up", "tcp://127.0.0.1:4100", 2) == (
        "ERROR haven.kiosk: synced via tcp://127.0.0.1:4100: 2 up")
    assert line("link down: %s", "/dev/ttyUSB0").endswith("link down: /dev/ttyUSB0")
    assert line("page at http://%s:%d", "127.0.0.1", 80).endswith("http://127.0.0.1:80")
    assert line("RSS %s MiB", "85.3").endswith("RSS 85.3 MiB")
    assert "1984" not in line("year %s", "1984") and "ab12" not in line("id %s", "ab12")
    refused = line("check-in refused: %s", ValueError("Amina Okafor, born 1984, P4471923"))
    assert refused.endswith("check-in refused: ValueError") and "Amina" not in refused
    for value in ("Amina Okafor", "P4471923", "tcp://x:1 Amina", "/dev/../Amina Okafor"):
        assert value not in line("name %s", value)
    crashed = line("failed", exc=RuntimeError("P4471923"))
    assert "exc=RuntimeError" in crashed and "P4471923" not in crashed
    assert "P4471923" not in line("two %s %s", "P4471923")  # a broken call: nothing shown


def test_stderr_hides_a_message_built_from_values() -> None:
    """A message that is not a template of the code (asyncio's report of a task's
    exception quotes its repr; an exception or an f-string passed as the message) shows
    as the marker and where it was logged, never the values."""
    import asyncio

    from device.logs.stderr import RedactedStderr

    lines: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            lines.append(self.format(record))

    keep = Keep()
    keep.setFormatter(RedactedStderr())
    log = logging.getLogger("haven.test.stderr")
    for logger in (logging.getLogger("asyncio"), log):
        logger.addHandler(keep)
    try:
        loop = asyncio.new_event_loop()
        task = loop.create_future()  # its repr quotes the exception's message
        task.set_exception(ValueError(f"claim {PHI[0]} {PHI[1]}"))
        loop.call_exception_handler({"message": "Task exception was never retrieved",
                                     "exception": task.exception(), "future": task})
        loop.close()
        log.error(ValueError(PHI[1]))
        log.error(f"refused {PHI[0]}")
        log.error("a literal without arguments")
    finally:
        for logger in (logging.getLogger("asyncio"), log):
            logger.removeHandler(keep)
    assert len(lines) == 4 and lines[-1].endswith("a literal without arguments")
    for line in lines[:3]:
        assert NOT_LITERAL in line and PHI[0] not in line and PHI[1] not in line, line
