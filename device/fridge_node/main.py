"""A board's entry: copy the node's modules to /lib and this file to / (untested here).

A DS18B20 on GPIO 22, the kiosk on UART 0 at the configured baud, the
console on the USB serial port (MicroPython's REPL is off while this runs;
Ctrl-C stops it). Everything else is the same code the unix port runs.
"""

import select
import sys
import time

from device.fridge_node import console
from device.fridge_node.node import Node
from device.fridge_node.sensors import Ds18b20

SENSOR_PIN = 22
FOLDER = "/data"


class Monotonic:
    """Seconds since boot from ``time.ticks_ms``, which wraps: the differences add up."""

    def __init__(self) -> None:
        self._last = time.ticks_ms()  # type: ignore[attr-defined]
        self._ms = 0

    def __call__(self) -> float:
        ticks = time.ticks_ms()  # type: ignore[attr-defined]
        self._ms += time.ticks_diff(ticks, self._last)  # type: ignore[attr-defined]
        self._last = ticks
        return self._ms / 1000


def run() -> None:
    import machine  # a board's: this module imports anywhere, it runs on a board only

    clock = Monotonic()
    node = Node(FOLDER, Ds18b20(SENSOR_PIN), clock())
    # rxbuf: what the kiosk sends while a reading blocks for its 750 ms conversion
    uart = machine.UART(0, baudrate=node.settings["baud"], timeout=0, rxbuf=1024)
    poll = select.poll()
    poll.register(sys.stdin, select.POLLIN)
    buf = bytearray(256)
    typed = ""
    while True:
        now = clock()
        n = uart.readinto(buf) if uart.any() else 0
        if n:
            node.receive(bytes(buf[:n]), now)
        out = node.output(now)
        if out:
            uart.write(out)
        if poll.poll(0):
            char = sys.stdin.read(1)
            if char in ("\r", "\n"):
                print(console.handle(node, typed))
                typed = ""
            else:
                typed += char
        time.sleep_ms(max(0, min(int((node.deadline() - clock()) * 1000), 20)))  # type: ignore[attr-defined]


if __name__ == "__main__":  # as a board runs /main.py
    run()
