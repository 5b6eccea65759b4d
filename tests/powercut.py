"""Power-cut emulation from a system-call trace.

``strace -f -xx -s 1000000`` records every ``openat``, ``pwrite64``,
``ftruncate``, ``fsync``, ``fdatasync``, ``unlink``, ``close`` and ``write``
of a run. Replaying it, a file's durable image takes a write only when an
``fsync``/``fdatasync`` of that file follows it: exactly what a disk keeps
when the power goes (the page cache, which survives ``kill -9``, is lost).
Each time the child prints a line, the durable images of that instant are
saved, so a test can cut the power right after any message it printed.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

_LINE = re.compile(r"^(\d+)\s+(.*)$")
_CALL = re.compile(r"^(\w+)\((.*)$")
_RESUMED = re.compile(r"^<\.\.\. (\w+) resumed>(.*)$")
_RESULT = re.compile(r"\)\s+=\s+(-?\d+)")
_STRING = re.compile(r'"((?:\\x[0-9a-f]{2})*)"')


def _hex(text: str) -> bytes:
    return bytes.fromhex(text.replace("\\x", ""))


@dataclass
class Cut:
    printed: list[str]
    files: dict[str, bytes]


@dataclass
class Replay:
    root: Path
    initial: dict[str, bytes]
    durable: dict[str, bytearray] = field(default_factory=dict)
    pending: dict[str, list[tuple[str, int, bytes]]] = field(default_factory=dict)
    fds: dict[int, str] = field(default_factory=dict)
    stdout: bytes = b""
    cuts: list[Cut] = field(default_factory=list)

    def run(self, trace: str) -> list[Cut]:
        self.durable = {k: bytearray(v) for k, v in self.initial.items()}
        unfinished: dict[str, tuple[str, str]] = {}
        for raw in trace.splitlines():
            m = _LINE.match(raw)
            if not m:
                continue
            pid, rest = m.groups()
            if rest.endswith("<unfinished ...>"):
                call = _CALL.match(rest)
                if call:
                    unfinished[pid] = (call.group(1), call.group(2)[: -len("<unfinished ...>")])
                continue
            resumed = _RESUMED.match(rest)
            if resumed:
                name, tail = resumed.groups()
                if pid not in unfinished:
                    continue
                _, args = unfinished.pop(pid)
                self._event(name, args + tail)
                continue
            call = _CALL.match(rest)
            if call:
                self._event(call.group(1), call.group(2))
        return self.cuts

    def _name(self, path: bytes) -> str | None:
        p = Path(path.decode())
        return p.name if p.parent == self.root else None

    def _event(self, name: str, args: str) -> None:
        result = _RESULT.search(args)
        ret = int(result.group(1)) if result else -1
        if ret < 0:
            return
        strings = _STRING.findall(args)
        nums = [int(x) for x in re.findall(r"(?<![\\x\w])(\d+)(?![\w])", args.split('"')[0])]
        if name == "openat" and strings:
            fname = self._name(_hex(strings[0]))
            if fname is not None:
                self.fds[ret] = fname
                self.durable.setdefault(fname, bytearray())
                self.pending.setdefault(fname, [])
        elif name in ("pwrite64", "write", "ftruncate", "fsync", "fdatasync", "close") and nums:
            fd = nums[0]
            if name == "write" and fd == 1 and strings:
                self._print(_hex(strings[0])[:ret])
                return
            fname = self.fds.get(fd)
            if fname is None:
                return
            if name == "pwrite64":
                offset = int(args.rsplit(",", 1)[1].split(")")[0])
                self.pending[fname].append(("w", offset, _hex(strings[0])[:ret]))
            elif name == "write":
                raise AssertionError("the store writes files with pwrite64 only")
            elif name == "ftruncate":
                size = int(args.split(",")[1].split(")")[0])
                self.pending[fname].append(("t", size, b""))
            elif name in ("fsync", "fdatasync"):
                image = self.durable[fname]
                for op, pos, data in self.pending[fname]:
                    if op == "t":
                        del image[pos:]
                    else:
                        if len(image) < pos:
                            image.extend(bytes(pos - len(image)))
                        image[pos:pos + len(data)] = data
                self.pending[fname] = []
            elif name == "close":
                self.fds.pop(fd, None)
        elif name == "unlink" and strings:
            fname = self._name(_hex(strings[0]))
            if fname is not None:
                self.durable.pop(fname, None)
                self.pending.pop(fname, None)

    def _print(self, data: bytes) -> None:
        self.stdout += data
        lines = self.stdout.decode().splitlines()
        if self.stdout.endswith(b"\n"):
            self.cuts.append(Cut(lines, {k: bytes(v) for k, v in self.durable.items()}))


def restore(cut: Cut, into: Path, keep: dict[str, bytes]) -> None:
    """Write the durable files of ``cut`` (no shared-memory index) and ``keep`` into a dir."""
    into.mkdir(mode=0o700)
    for name, data in {**keep, **cut.files}.items():
        if name.endswith("-shm"):
            continue
        path = into / name
        path.write_bytes(data)
        path.chmod(0o600)
