"""The node under MicroPython's unix port: its command line.

    micropython -m device.fridge_node.unix --data DIR [--profile P] [--serial PATH]
    micropython -m device.fridge_node.unix --data DIR --step [--profile P] [--start US]
    micropython -m device.fridge_node.unix --data DIR console COMMAND...

(with MICROPYPATH=protocol/portable/stdlib:. from the repository's root).
The first runs in real time: a reading every ``interval`` seconds from the
simulated sensor, the session over the serial device PATH (a pty: made raw
and non-blocking with stty), technician's commands read from stdin. The
second is step mode (``stepper``): the clock is the caller's. The third runs
one console command and exits (provisioning from a script).
"""

from __future__ import annotations

import os
import select
import sys
import time

from device.fridge_node import console, stepper
from device.fridge_node.node import Node
from device.fridge_node.sensors import SimulatedSensor

USAGE = """usage (MICROPYPATH=protocol/portable/stdlib:. from the repository's root):
  micropython -m device.fridge_node.unix --data DIR [--profile P] [--serial PATH]
  micropython -m device.fridge_node.unix --data DIR --step [--profile P] [--start US]
  micropython -m device.fridge_node.unix --data DIR console COMMAND..."""


def _options(argv: list[str]) -> tuple[dict[str, str], list[str]]:
    options: dict[str, str] = {}
    rest: list[str] = []
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg == "--step":
            options["step"] = "1"
        elif arg in ("--data", "--profile", "--serial", "--start") and i + 1 < len(argv):
            options[arg[2:]] = argv[i + 1]
            i += 1
        elif arg.startswith("--"):
            raise ValueError(f"unknown option {arg}")
        else:
            rest = argv[i:]
            break
        i += 1
    if "data" not in options:
        raise ValueError("--data DIR is required")
    return options, rest


_STARTED_NS = time.time_ns()


def now_seconds() -> float:
    """Seconds since the process started: the node's clock is relative, as on a board
    (whose single-precision floats could not hold a Unix time to the second)."""
    return (time.time_ns() - _STARTED_NS) / 1e9


def run_serial(node: Node, path: str | None) -> None:
    """Real time: the serial line, the console on stdin, the node's deadlines. Runs
    until the process is stopped."""
    line = None
    poll = select.poll()
    if path is not None:
        # MicroPython has no termios: stty makes the line raw, and reads return what is there
        if "'" in path or os.system(f"stty -F '{path}' raw -echo min 0 time 0") != 0:
            raise OSError(f"cannot set up the serial line {path}")
        line = open(path, "r+b")  # noqa: SIM115 (open for the process's life)
        poll.register(line, select.POLLIN)
    poll.register(sys.stdin, select.POLLIN)
    buf = bytearray(256)
    while True:
        now = now_seconds()
        out = node.output(now)
        if out and line is not None:
            line.write(out)
        wait = max(0, min(int((node.deadline() - now) * 1000), 1000))
        for obj, _ in poll.poll(wait):
            now = now_seconds()
            fd = obj if isinstance(obj, int) else obj.fileno()  # CPython gives descriptors
            if line is not None and fd == line.fileno():
                n = line.readinto(buf)
                if n:
                    node.receive(bytes(buf[:n]), now)
            else:
                text = sys.stdin.readline()
                if text:
                    print(console.handle(node, text))
                else:  # no console (stdin is closed): the node goes on without one
                    poll.unregister(sys.stdin)


def main(argv: list[str]) -> int:
    try:
        options, rest = _options(argv)
    except ValueError as exc:
        print(f"error: {exc}\n{USAGE}")
        return 2
    folder = options["data"]
    try:
        os.stat(folder)
    except OSError:
        os.mkdir(folder)
    start = int(options.get("start", "0")) / stepper.US if "step" in options else now_seconds()
    try:
        sensor = SimulatedSensor(options.get("profile", "steady:5.0"), start)
    except ValueError as exc:
        print(f"error: {exc}")
        return 2
    node = Node(folder, sensor, start)
    if rest[:1] == ["console"]:
        answer = console.handle(node, " ".join(rest[1:]))
        print(answer)
        return 1 if answer.startswith("error:") else 0  # a provisioning script sees it
    if "step" in options:
        stepper.serve(node)
    else:
        try:
            run_serial(node, options.get("serial"))
        except OSError as exc:
            print(f"error: {exc}")
            return 1
        except KeyboardInterrupt:  # Ctrl-C: keep what was taken since the last commit
            node.commit(now_seconds())
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
