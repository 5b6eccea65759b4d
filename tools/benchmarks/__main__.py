"""``./tools/bench [NAME...] [--quick]``: run benchmarks, write JSON and BENCHMARKS.md."""

from __future__ import annotations

import argparse
import json
import platform
import shlex
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

from . import Context, load_all
from .report import render

ROOT = Path(__file__).resolve().parents[2]


def main(argv: list[str] | None = None) -> int:
    registry = load_all()
    p = argparse.ArgumentParser(prog="bench", description=__doc__)
    p.add_argument("names", nargs="*", help=f"benchmarks to run (default: all of "
                   f"{', '.join(sorted(registry))})")
    p.add_argument("--quick", action="store_true", help="smaller sizes: minutes, not hours")
    p.add_argument("--list", action="store_true", help="list the benchmarks and exit")
    p.add_argument("--out", type=Path, default=ROOT / "bench-out", help="JSON results directory")
    p.add_argument("--markdown", type=Path, default=ROOT / "BENCHMARKS.md")
    args = p.parse_args(argv)
    if args.list:
        for name in sorted(registry):
            print(f"{name:16} {registry[name].title}")
        return 0
    unknown = [n for n in args.names if n not in registry]
    if unknown:
        p.error(f"unknown benchmark(s): {', '.join(unknown)}; try --list")
    names = args.names or sorted(registry)
    args.out.mkdir(parents=True, exist_ok=True)
    results_path = args.out / "results.json"
    results = json.loads(results_path.read_text()) if results_path.exists() else {}
    command = "./tools/bench " + shlex.join([*args.names, *(["--quick"] if args.quick else [])])
    for name in names:
        bench = registry[name]
        print(f"== {name}: {bench.title}", file=sys.stderr, flush=True)
        t0 = time.monotonic()
        with tempfile.TemporaryDirectory(prefix=f"bench-{name}-") as tmp:
            result = bench.func(Context(quick=args.quick, workdir=Path(tmp)))
        # Another run may have finished meanwhile: keep its tables.
        if results_path.exists():
            results = json.loads(results_path.read_text())
        results[name] = {
            "title": bench.title,
            "when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "seconds": round(time.monotonic() - t0, 1),
            "quick": args.quick,
            "command": command.strip(),
            "machine": f"{platform.machine()}, Python {platform.python_version()}",
            **asdict(result),
        }
        results_path.write_text(json.dumps(results, indent=2, sort_keys=True) + "\n")
        previous = args.markdown.read_text() if args.markdown.exists() else ""
        args.markdown.write_text(render(results, previous))
        for row in result.rows:
            print("  " + json.dumps(row), flush=True)
    print(f"wrote {results_path} and {args.markdown}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
