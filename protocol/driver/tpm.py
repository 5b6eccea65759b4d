"""A TPM 2.0 through Debian's tpm2-tools: sealed secrets and HMAC keys.

Theory of operation
-------------------
Each operation runs tpm2-tools commands (about 30 ms each) against the TPM
the TCTI names: ``device:/dev/tpmrm0`` on a Pi with a TPM HAT (the kernel's
resource manager), ``swtpm:host=127.0.0.1,port=N`` for the software TPM the
tests start. No Python binding: pip's tpm2-pytss builds from source, and
Debian's python3-tpm2-pytss serves Debian's interpreter, not a venv.

Every object hangs under one primary key of the owner hierarchy, made again
from the TPM's owner seed by each operation (the template is pinned here,
so a newer tpm2-tools cannot change it): the same TPM gives the same primary
until it is cleared. ``seal`` makes a sealed data object under it and hands
back its public and private blobs, which the caller keeps on disk; the
private blob is encrypted under the primary, so the blobs are useless on any
other TPM, or on this one once cleared. ``import_hmac`` imports an HMAC key
and makes it persistent (a handle in Haven's range of the owner's persistent
handles), so each ``hmac`` is one command with no object to load.

swtpm has no resource manager: a transient object stays loaded after the
command that loaded it, and three fill its slots ("out of memory for object
contexts"). So each operation ends with a flush of the transient objects,
and flushes between its commands once three would be loaded (under the
kernel's resource manager, a flush of nothing); a command that still finds
the slots full (a crashed process's leftovers) is run again after a flush.
Each operation holds a lock on its TCTI, so that no other operation flushes
its objects or fills the slots meanwhile: a thread lock within a process,
and ``flock`` on a lock file shared by every process of the machine
(``lock_path``: in /run/lock, named by the TCTI's hash, so one TPM named
two ways is two locks). A process that waits longer than ``lock_wait``
gets ``TpmBusy``, naming the file; the kernel drops a dead process's lock.

Secrets never touch a disk: they go in through an anonymous memory file and
come out on a pipe. The errors say what is wrong: ``TpmToolsMissing`` (the
apt package to install), ``TpmAbsent`` (nothing answers at the TCTI) and
``TpmKeyGone`` (the TPM refuses the blobs or lacks the handle: it was
cleared, or it is another TPM, and what was sealed to it is gone),
``TpmBusy`` (another process kept the TPM past the wait).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import re
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

from protocol.driver.errors import DriverError

DEFAULT_TCTI = "device:/dev/tpmrm0"
TOOLS_PACKAGE = "tpm2-tools"
#: Haven's persistent handles, in the owner's range (TCG: 0x81000000-0x817FFFFF).
FIRST_HANDLE, LAST_HANDLE = 0x81000100, 0x810001FF
#: The primary key's template: ECC P-256 storage key, AES-128-CFB for its children.
PRIMARY = ("-C", "o", "-G", "ecc256:null:aes128cfb", "-g", "sha256", "-a",
           "restricted|decrypt|fixedtpm|fixedparent|sensitivedataorigin|userwithauth|noda")
#: The largest message ``hmac`` takes in one command (TPM2_HMAC's buffer).
MAX_HMAC_INPUT = 1024
# What the TPM answers for blobs it cannot load (another or a cleared TPM: its
# primary differs, 0x1DF), or for a persistent handle it does not hold (0x18B).
_GONE = re.compile(r"integrity check failed|0x1DF\b|0x18B\b|handle is not correct", re.I)
_NO_TCTI = "Could not load tcti"
_FULL = "out of memory for object contexts"
_LOCKS: dict[str, threading.Lock] = {}
#: Where the lock files of the TPMs are: shared by every process of the machine.
LOCK_DIRS = ("/run/lock", tempfile.gettempdir())


class TpmError(DriverError):
    """The TPM refused an operation, or answered nothing understood."""

    code = "tpm"


class TpmToolsMissing(TpmError, FileNotFoundError):
    code = "tpm-tools-missing"


class TpmAbsent(TpmError, OSError):
    """Nothing answers at the TCTI: no TPM device, no swtpm listening."""

    code = "tpm-absent"


class TpmKeyGone(TpmError):
    """The TPM cannot load what was sealed to it: it was cleared, or it is another."""

    code = "tpm-key-gone"


class TpmBusy(TpmError):
    """Another process held the TPM past the wait (stuck on it, or a long queue)."""

    code = "tpm-busy"


class TpmRecordDamaged(TpmError, ValueError):
    """A record of what was sealed to the TPM (``tpm_key``) does not read."""

    code = "bad-key-file"


class Tpm:
    """One TPM, named by its TCTI."""

    def __init__(self, tcti: str = DEFAULT_TCTI, timeout: float = 10.0,
                 lock_wait: float = 30.0) -> None:
        """``timeout``: for each command; ``lock_wait``: for the TPM, while another
        process uses it."""
        self.tcti = tcti
        self.timeout = timeout
        self.lock_wait = lock_wait
        self._lock = _LOCKS.setdefault(tcti, threading.Lock())

    def __repr__(self) -> str:
        return f"Tpm({self.tcti!r})"

    # Operations ---------------------------------------------------------------------

    def seal(self, secret: bytes) -> tuple[bytes, bytes]:
        """Seal ``secret`` (at most 128 bytes) to this TPM: its public and private blobs."""
        with self._held(), _Scratch() as tmp:
            self._primary(tmp)
            with _MemFile(secret) as mem:
                try:
                    self._run("tpm2_create", "-C", tmp("primary"), "-i", mem.path, "-u",
                              tmp("pub"), "-r", tmp("priv"), pass_fds=[mem.fd])
                finally:
                    self._flush()
            return Path(tmp("pub")).read_bytes(), Path(tmp("priv")).read_bytes()

    def unseal(self, public: bytes, private: bytes, what: str) -> bytes:
        """The secret that ``seal`` gave these blobs for; ``TpmKeyGone`` on another TPM."""
        with self._held(), _Scratch() as tmp:
            self._primary(tmp)
            self._load(tmp, public, private, what)
            try:
                return self._run("tpm2_unseal", "-c", tmp("object"), gone=what)
            finally:
                self._flush()

    def import_hmac(self, key: bytes) -> int:
        """Import ``key`` as an HMAC-SHA256 key held by the TPM; its persistent handle."""
        with self._held(), _Scratch() as tmp:
            handle = self._free_handle()
            self._primary(tmp)
            with _MemFile(key) as mem:
                try:
                    self._run("tpm2_import", "-C", tmp("primary"), "-G", "hmac", "-g", "sha256",
                              "-i", mem.path, "-u", tmp("pub"), "-r", tmp("priv"),
                              pass_fds=[mem.fd])
                finally:
                    self._flush()
            self._load(tmp, Path(tmp("pub")).read_bytes(), Path(tmp("priv")).read_bytes(),
                       "the imported key")
            try:
                self._run("tpm2_evictcontrol", "-C", "o", "-c", tmp("object"), f"{handle:#x}")
            finally:
                self._flush()
            return handle

    def hmac(self, handle: int, message: bytes, what: str = "the HMAC key") -> bytes:
        """HMAC-SHA256 of ``message`` under the persistent key at ``handle``."""
        if len(message) > MAX_HMAC_INPUT:
            raise TpmError(f"a TPM HMAC takes at most {MAX_HMAC_INPUT} bytes in one command")
        with self._held():
            return self._run("tpm2_hmac", "-c", f"{handle:#x}", "-g", "sha256",
                             stdin=message, gone=what)

    def evict(self, handle: int) -> None:
        """Delete the persistent object at ``handle``, if the TPM holds one."""
        with self._held():
            if handle in self.persistent_handles():
                self._run("tpm2_evictcontrol", "-C", "o", "-c", f"{handle:#x}")

    def persistent_handles(self) -> set[int]:
        out = self._run("tpm2_getcap", "handles-persistent").decode()
        return {int(h, 16) for h in re.findall(r"0x[0-9a-fA-F]+", out)}

    # Steps ----------------------------------------------------------------------------

    @contextlib.contextmanager
    def _held(self) -> Iterator[None]:
        """This TPM to ourselves: no thread of ours, no other process, uses it meanwhile."""
        with self._lock:
            path = lock_path(self.tcti)
            fd = _open_lock(path)
            try:
                deadline, pause = time.monotonic() + self.lock_wait, 0.005
                while True:
                    try:
                        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                        break
                    except BlockingIOError:
                        if time.monotonic() >= deadline:
                            raise TpmBusy(f"the TPM at {self.tcti} stayed in use by another "
                                          f"process for {self.lock_wait:g} s (it holds "
                                          f"{path}); is one stuck on it?") from None
                        time.sleep(pause)
                        pause = min(2 * pause, 0.1)
                yield
            finally:
                os.close(fd)  # the lock goes with it

    def _free_handle(self) -> int:
        held = self.persistent_handles()
        for handle in range(FIRST_HANDLE, LAST_HANDLE + 1):
            if handle not in held:
                return handle
        raise TpmError(f"the TPM's persistent handles {FIRST_HANDLE:#x} to {LAST_HANDLE:#x}"
                       " are all taken")

    def _primary(self, tmp: _Scratch) -> None:
        """The primary key, loaded (one transient object), its context in ``primary``."""
        self._run("tpm2_createprimary", *PRIMARY, "-c", tmp("primary"))

    def _load(self, tmp: _Scratch, public: bytes, private: bytes, what: str) -> None:
        """The object of these blobs, its context saved in ``object``; nothing loaded
        after (the primary's context and the object take two more slots)."""
        Path(tmp("pub")).write_bytes(public)
        Path(tmp("priv")).write_bytes(private)
        try:
            self._run("tpm2_load", "-C", tmp("primary"), "-u", tmp("pub"), "-r", tmp("priv"),
                      "-c", tmp("object"), gone=what)
        finally:
            self._flush()

    def _flush(self) -> None:
        self._run("tpm2_flushcontext", "-t")

    def _run(self, tool: str, *args: str, stdin: bytes | None = None, gone: str = "",
             pass_fds: Sequence[int] = ()) -> bytes:
        done = self._exec(tool, args, stdin, pass_fds)
        if done.returncode != 0 and _FULL in done.stderr.decode(errors="replace"):
            self._flush()  # another process's leftovers (swtpm: no resource manager)
            done = self._exec(tool, args, stdin, pass_fds)
        if done.returncode == 0:
            return done.stdout
        err = done.stderr.decode(errors="replace")
        if _NO_TCTI in err:
            raise TpmAbsent(f"no TPM answers at {self.tcti}: {_cause(err)} ({_hint(self.tcti)})")
        if gone and _GONE.search(err):
            raise TpmKeyGone(f"this TPM cannot load {gone}: the TPM was cleared, or this is "
                             "another TPM than the one it was sealed to; that key is gone")
        raise TpmError(f"{tool} failed at {self.tcti}: {_cause(err)}")

    def _exec(self, tool: str, args: Sequence[str], stdin: bytes | None,
              pass_fds: Sequence[int]) -> subprocess.CompletedProcess[bytes]:
        env = dict(os.environ, TPM2TOOLS_TCTI=self.tcti)
        try:
            return subprocess.run([tool, *args], input=stdin or b"", capture_output=True,
                                  env=env, timeout=self.timeout, pass_fds=pass_fds)
        except FileNotFoundError:
            raise TpmToolsMissing(f"{tool} is missing: install Debian's {TOOLS_PACKAGE} "
                                  f"(apt-get install {TOOLS_PACKAGE})") from None
        except subprocess.TimeoutExpired:
            raise TpmAbsent(f"the TPM at {self.tcti} did not answer {tool} within "
                            f"{self.timeout:g} s") from None


def lock_path(tcti: str) -> str:
    """The lock file of the TPM at ``tcti``, in the first of ``LOCK_DIRS`` we can write."""
    name = f"haven-tpm-{hashlib.sha256(tcti.encode()).hexdigest()[:16]}.lock"
    for directory in LOCK_DIRS:
        if os.access(directory, os.W_OK | os.X_OK):
            return os.path.join(directory, name)
    raise TpmError(f"no directory for the TPM's lock file: none of {', '.join(LOCK_DIRS)} "
                   "is writable")


def _open_lock(path: str) -> int:
    """The lock file, read-only (``flock`` needs no more), made if missing; another
    user's is opened, not made again (a sticky directory refuses ``O_CREAT`` on it)."""
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        try:
            return os.open(path, flags)
        except FileNotFoundError:
            return os.open(path, flags | os.O_CREAT, 0o644)
    except OSError as exc:
        raise TpmError(f"cannot open the TPM's lock file {path}: {exc.strerror}") from None


def _cause(stderr: str) -> str:
    """The most telling line tpm2-tools printed: a TPM or TCTI error, else the last."""
    lines = [ln.strip() for ln in stderr.splitlines() if ln.strip()]
    for pattern in ("errno", "tpm:", "No such file", "ERROR:"):
        for ln in lines:
            if pattern in ln:
                return re.sub(r"^(WARNING|ERROR):\S*\s*", "", ln)
    return lines[-1] if lines else "no message"


def _hint(tcti: str) -> str:
    if tcti.startswith("swtpm"):
        return "is swtpm running and listening there?"
    return ("is the TPM fitted, its overlay enabled (dtoverlay=tpm-slb9670 in config.txt),"
            " and this user in the tss group?")


class _Scratch:
    """A private directory for the tools' context and blob files (none secret), in
    memory where the system has a tmpfs; ``tmp(name)`` is a path in it."""

    def __enter__(self) -> _Scratch:
        shm = "/dev/shm"
        self._dir = tempfile.TemporaryDirectory(
            prefix="haven-tpm-", dir=shm if os.access(shm, os.W_OK) else None)
        return self

    def __exit__(self, *exc: object) -> None:
        self._dir.cleanup()

    def __call__(self, name: str) -> str:
        return os.path.join(self._dir.name, name)


class _MemFile:
    """``secret`` in an anonymous memory file, named for a child as /dev/fd/N (the
    tools seek in their input, so a pipe will not do)."""

    def __init__(self, secret: bytes) -> None:
        self.fd = os.memfd_create("haven-tpm-secret", 0)
        os.write(self.fd, secret)
        os.lseek(self.fd, 0, os.SEEK_SET)
        self.path = f"/dev/fd/{self.fd}"

    def __enter__(self) -> _MemFile:
        return self

    def __exit__(self, *exc: object) -> None:
        os.close(self.fd)
