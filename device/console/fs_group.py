"""SMP's FS group (8): files out of the export directory, into the import directory.

Names are relative: ``bundle.cbor``, ``logs/haven.log.1``. Downloads, status and
hash look in the export directory, then in the import directory (so an upload can be
checked); a name ``logs/NAME`` reads the kiosk's rotating log files instead
(``device.logs``: ``haven.log``, ``haven.log.1``...); uploads write into the import
directory only. A name is refused before
any file is touched (``FILE_INVALID_NAME``) if it is absolute, empty, longer than
``MAX_NAME``, holds a NUL, a control or an invisible character, a ``.`` or ``..``
component, or resolves (symbolic links followed) outside its directory.

An upload announces its length in its first chunk; a length above the limit or
above the free space (less a reserve) is refused before a byte is written. Chunks
go to a hidden ``.NAME.part`` file, renamed to NAME when the last byte is in, so a
half-sent configuration never appears. Nothing here installs or runs what arrives.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from device.console.args import maybe, need
from device.console.env import ConsoleEnv
from device.console.groups import EINVAL, ENOMEM, FS, Call, SmpError, register

TRANSFER, STATUS, HASH, HASH_TYPES, CLOSE = 0, 1, 2, 3, 4
MAX_NAME = 255
#: Bytes of file data per download response: the response stays within our buffer.
CHUNK = 3584

# Zephyr's FS group codes (``FS_MGMT_ERR_*``).
FS_ERR_UNKNOWN = 1
FS_ERR_FILE_INVALID_NAME = 2
FS_ERR_FILE_NOT_FOUND = 3
FS_ERR_FILE_IS_DIRECTORY = 4
FS_ERR_FILE_OPEN_FAILED = 5
FS_ERR_FILE_READ_FAILED = 7
FS_ERR_FILE_WRITE_FAILED = 10
FS_ERR_FILE_OFFSET_NOT_VALID = 11
FS_ERR_FILE_OFFSET_LARGER_THAN_FILE = 12
FS_ERR_CHECKSUM_HASH_NOT_FOUND = 13

STATE_KEY = "fs"
LOGS = "logs"  #: downloads named logs/NAME read the kiosk's log files (read only)


def _refuse(reason: str) -> SmpError:
    return SmpError(FS_ERR_FILE_INVALID_NAME, reason, group=FS)


def check_name(name: str) -> list[str]:
    """The name's components, or an ``SmpError`` saying why it is refused."""
    if not name or len(name) > MAX_NAME:
        raise _refuse(f"a name is 1 to {MAX_NAME} characters")
    # isprintable: no control character (C0, DEL, C1), no line or paragraph separator,
    # no invisible format character (a right-to-left override that makes a name read
    # backwards, a zero-width space between two names that look the same)
    if not name.isprintable() or "\\" in name:
        raise _refuse("a name holds only printable characters and no backslash")
    if name.startswith("/"):
        raise _refuse("a name is relative to the kiosk's export or import directory")
    parts = name.split("/")
    if any(p in ("", ".", "..") for p in parts):
        raise _refuse("a name has no empty, '.' or '..' part")
    return parts


def resolve(base: Path, name: str) -> Path:
    """``base/name``, refused if it is, or links to, anything outside ``base``."""
    parts = check_name(name)
    root = base.resolve()
    path = root.joinpath(*parts)
    if not path.resolve().is_relative_to(root):
        raise _refuse("the name leads outside its directory")
    return path


def _readable(env: ConsoleEnv, name: str) -> Path:
    """The file a read names: ``logs/NAME`` in the kiosk's log directory, else in the
    export directory, else in the import directory."""
    parts = check_name(name)
    if parts[0] == LOGS and len(parts) > 1 and env.log_dir is not None:
        places = [(env.log_dir, "/".join(parts[1:]))]
    else:
        places = [(env.export_dir, name), (env.import_dir, name)]
    for base, rel in places:
        path = resolve(base, rel)
        if path.is_file():
            return path
        if path.is_dir():
            raise SmpError(FS_ERR_FILE_IS_DIRECTORY, "a directory", group=FS)
    raise SmpError(FS_ERR_FILE_NOT_FOUND, "no such file", group=FS)


@dataclass
class Upload:
    name: str
    final: Path
    part: Path
    size: int
    file: BinaryIO
    written: int = 0

    def close(self) -> None:
        """Abandon it: the part file goes."""
        self.file.close()
        self.part.unlink(missing_ok=True)


@dataclass
class Download:
    name: str
    path: Path
    file: BinaryIO

    def close(self) -> None:
        self.file.close()


@dataclass
class Open:
    """The port's open files: at most one download and one upload."""

    download: Download | None = None
    upload: Upload | None = None

    def close(self) -> None:
        for f in (self.download, self.upload):
            if f is not None:
                f.close()
        self.download = self.upload = None


def _open(call: Call) -> Open:
    state = call.port.state.get(STATE_KEY)
    if not isinstance(state, Open):
        state = call.port.state[STATE_KEY] = Open()
    return state


@register(FS, TRANSFER, op="read")
def download(call: Call) -> Mapping[str, Any]:
    name = need(call.body, "name", str)
    off = need(call.body, "off", int)
    path = _readable(call.env, name)
    state = _open(call)
    d = state.download
    if d is None or d.name != name:
        if d is not None:
            d.close()
        try:
            d = state.download = Download(name, path, path.open("rb"))
        except OSError as exc:
            raise SmpError(FS_ERR_FILE_OPEN_FAILED, str(exc), group=FS) from None
    try:
        size = os.fstat(d.file.fileno()).st_size
        if off < 0 or off > size:
            raise SmpError(FS_ERR_FILE_OFFSET_LARGER_THAN_FILE, "offset past the end", group=FS)
        d.file.seek(off)
        data = d.file.read(CHUNK)
    except OSError as exc:
        raise SmpError(FS_ERR_FILE_READ_FAILED, str(exc), group=FS) from None
    out: dict[str, Any] = {"off": off, "data": data}
    if off == 0:
        out["len"] = size
    if off + len(data) >= size:
        state.download = None
        d.close()
    return out


def _start_upload(call: Call, name: str, size: int) -> Upload:
    env: ConsoleEnv = call.env
    final = resolve(env.import_dir, name)
    if size < 0 or size > env.max_upload:
        raise SmpError(ENOMEM, f"{size} bytes is more than the {env.max_upload} an upload "
                       "may be")
    env.import_dir.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(env.import_dir).free
    if size > free - env.upload_reserve:
        raise SmpError(ENOMEM, f"{size} bytes do not fit: {free} bytes free")
    if final.is_dir():
        raise SmpError(FS_ERR_FILE_IS_DIRECTORY, "a directory", group=FS)
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
        part = final.with_name(f".{final.name}.part")
        return Upload(name, final, part, size, part.open("wb"))
    except OSError as exc:
        raise SmpError(FS_ERR_FILE_OPEN_FAILED, str(exc), group=FS) from None


@register(FS, TRANSFER, op="write")
def upload(call: Call) -> Mapping[str, Any]:
    name = need(call.body, "name", str)
    off = need(call.body, "off", int)
    data = maybe(call.body, "data", bytes, b"")
    state = _open(call)
    up = state.upload
    if off == 0:
        size = maybe(call.body, "len", int, -1)
        if size < 0:
            raise SmpError(EINVAL, "the first chunk says the file's len")
        check_name(name)
        if up is not None:
            up.close()
            state.upload = None
        up = state.upload = _start_upload(call, name, size)
    elif up is None or up.name != name:
        raise SmpError(FS_ERR_FILE_OFFSET_NOT_VALID, "no upload of that name under way",
                       group=FS)
    elif off != up.written:
        return {"off": up.written}  # the client goes on from where we are
    if up.written + len(data) > up.size:
        up.close()
        state.upload = None
        raise SmpError(EINVAL, "more data than the announced len")
    try:
        up.file.write(data)
        up.written += len(data)
        if up.written == up.size:
            up.file.flush()
            os.fsync(up.file.fileno())
            up.file.close()
            os.replace(up.part, up.final)
            state.upload = None
    except OSError as exc:
        up.close()
        state.upload = None
        raise SmpError(FS_ERR_FILE_WRITE_FAILED, str(exc), group=FS) from None
    return {"off": up.written}


@register(FS, STATUS, op="read")
def status(call: Call) -> Mapping[str, Any]:
    path = _readable(call.env, need(call.body, "name", str))
    return {"len": path.stat().st_size}


@register(FS, HASH, op="read")
def hash_(call: Call) -> Mapping[str, Any]:
    path = _readable(call.env, need(call.body, "name", str))
    kind = maybe(call.body, "type", str, "sha256")
    if kind != "sha256":
        raise SmpError(FS_ERR_CHECKSUM_HASH_NOT_FOUND, "only sha256", group=FS)
    off = maybe(call.body, "off", int, 0)
    size = path.stat().st_size
    length = maybe(call.body, "len", int, size - off)
    if off < 0 or length < 0 or off + length > size:
        raise SmpError(FS_ERR_FILE_OFFSET_LARGER_THAN_FILE, "past the end", group=FS)
    h = hashlib.sha256()
    with path.open("rb") as f:
        f.seek(off)
        left = length
        while left > 0 and (block := f.read(min(left, 65536))):
            h.update(block)
            left -= len(block)
    return {"type": "sha256", "off": off, "len": length, "output": h.digest()}


@register(FS, HASH_TYPES, op="read")
def hash_types(call: Call) -> Mapping[str, Any]:
    return {"types": {"sha256": {"format": 1, "size": 32}}}


@register(FS, CLOSE, op="write")
def close(call: Call) -> Mapping[str, Any]:
    _open(call).close()
    return {}
