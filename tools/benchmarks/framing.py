"""Frame encoder and decoder throughput, in MB/s of payload.

Measured with the C-backed CRC-32C (the default where the ``crc32c`` package
is installed) and with the pure-Python CRC (``protocol.crc32c._pure_crc32c``),
which stands in for a slow CPU or a platform without the C extension. The
decoder is fed 4 KiB chunks, as a serial reader would. ``line_headroom`` is
decoder throughput over the 11,520 B/s of a 115200-baud line: a Pi Zero 2 W
is several times slower than this machine, so it wants to be far above 10.
"""

from __future__ import annotations

import functools
import random
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import protocol.crc32c as crcmod
import protocol.framing as framing

from . import Context, Result, benchmark

LINE_RATE = 11520
CHUNK = 4096


@contextmanager
def crc_impl(name: str) -> Iterator[None]:
    """Swap the CRC function protocol.framing uses (restored afterwards)."""
    saved = vars(framing)["crc32c"]
    if name == "python":
        setattr(framing, "crc32c", crcmod._pure_crc32c)  # noqa: B010 (not re-exported)
    try:
        yield
    finally:
        setattr(framing, "crc32c", saved)  # noqa: B010


def _best_rate(fn: Callable[[], int], min_time: float) -> float:
    """Payload bytes per second of the fastest of several repetitions."""
    best = 0.0
    deadline = time.perf_counter() + min_time
    reps = 0
    while reps < 3 or time.perf_counter() < deadline:
        t0 = time.perf_counter()
        n = fn()
        dt = time.perf_counter() - t0
        best = max(best, n / dt)
        reps += 1
        if reps >= 50:
            break
    return best


def _encode(payloads: list[bytes]) -> int:
    for p in payloads:
        framing.encode_frame(p)
    return sum(len(p) for p in payloads)


def _decode(wire: bytes, expect: int) -> int:
    dec = framing.FrameDecoder()
    got = []
    for i in range(0, len(wire), CHUNK):
        got += dec.feed(wire[i : i + CHUNK])
    if len(got) != expect:
        raise AssertionError(f"decoded {len(got)} frames of {expect}")
    return sum(len(p) for p in got)


@benchmark("framing", "Frame encoder and decoder throughput (protocol.framing)")
def framing_throughput(ctx: Context) -> Result:
    rng = random.Random(7)
    total = (256 if ctx.quick else 1024) * 1024
    min_time = 0.3 if ctx.quick else 1.0
    rows: list[dict[str, Any]] = []
    impls = ["c", "python"] if crcmod.implementation() == "c" else ["python"]
    for impl in impls:
        for size in (64, 256, 1024):
            payloads = [rng.randbytes(size) for _ in range(max(1, total // size // 4))]
            if impl == "python":
                payloads = payloads[: max(1, len(payloads) // 8)]
            with crc_impl(impl):
                wire = b"".join(framing.encode_frame(p) for p in payloads)

                enc_rate = _best_rate(functools.partial(_encode, payloads), min_time)
                dec_rate = _best_rate(functools.partial(_decode, wire, len(payloads)), min_time)
            payload_bytes = sum(len(p) for p in payloads)
            rows.append({
                "crc": impl, "payload": size,
                "encode_MBps": round(enc_rate / 1e6, 2),
                "decode_MBps": round(dec_rate / 1e6, 2),
                "wire_per_byte": round(len(wire) / payload_bytes, 4),
                "line_headroom": round(dec_rate / LINE_RATE),
            })
            ctx.log(str(rows[-1]))
    columns = ["crc", "payload", "encode_MBps", "decode_MBps", "wire_per_byte", "line_headroom"]
    notes = ["MB = 10^6 bytes of payload. line_headroom = decode rate / 11,520 B/s."]
    return Result(rows, columns, notes, {"chunk": CHUNK})
