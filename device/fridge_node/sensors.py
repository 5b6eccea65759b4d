"""Temperature sensors: a DS18B20's scratchpad, the hardware driver and a simulated one.

Theory of operation
-------------------
Every driver returns a DS18B20 scratchpad (9 bytes, the last a Dallas CRC-8)
or ``None`` when nothing answered; ``decode`` turns it into hundredths of °C
or a fault code (``protocol.sensor.FAULTS``): no answer, a bad CRC, the
power-on register value 85.00 °C, or a value outside what the part measures.
A fault is never a temperature.

``SimulatedSensor`` follows a script, the profile, and builds the scratchpad
the real part would, so the unix port exercises the same decoding. A profile
is comma-separated segments ``what[:°C]:minutes`` from the node's start:
``steady:4.5`` (the base temperature, also what follows the script),
``high:12.0:45`` / ``low:-1.5:30`` (an excursion), ``none:10`` (no answer),
``crc:3`` (a bad CRC), ``reset:2`` (85.00 °C), ``range:2`` (out of range).
"""

from __future__ import annotations

from protocol import sensor

RESET_RAW = 0x0550  #: 85.00 °C in sixteenths: the register's power-on value
RANGE_RAW = 0x07FF  #: 127.94 °C: a value no DS18B20 measures
_FAULTY = ("none", "crc", "reset", "range")
_TEMPERATURES = ("steady", "high", "low")


def crc8(data: bytes) -> int:
    """The Dallas/Maxim 1-Wire CRC-8 (polynomial x^8 + x^5 + x^4 + 1, reflected)."""
    crc = 0
    for byte in data:
        for _ in range(8):
            mix = (crc ^ byte) & 1
            crc >>= 1
            if mix:
                crc ^= 0x8C
            byte >>= 1
    return crc


def scratchpad(raw: int) -> bytes:
    """The 9 bytes a DS18B20 holding ``raw`` (sixteenths of °C, 16 bits) sends."""
    raw &= 0xFFFF
    body = bytes([raw & 0xFF, raw >> 8, 0x4B, 0x46, 0x7F, 0xFF, 0x0C, 0x10])
    return body + bytes([crc8(body)])


def decode(pad: bytes | None) -> int | str:
    """Hundredths of °C, or the fault code of a missing, damaged or absurd answer."""
    if pad is None or len(pad) != 9:
        return "no-sensor"
    if crc8(pad[:8]) != pad[8]:
        return "crc"
    raw = pad[0] | pad[1] << 8
    if raw == RESET_RAW:
        return "reset-value"
    if raw & 0x8000:
        raw -= 0x10000
    centi = (abs(raw) * 100 + 8) // 16  # sixteenths to hundredths, halves away from zero
    if raw < 0:
        centi = -centi
    if not sensor.MIN_CENTI <= centi <= sensor.MAX_CENTI:
        return "out-of-range"
    return centi


def parse_profile(text: str) -> tuple[int, list[tuple[str, int, int]]]:
    """``(base centi-°C, [(what, centi-°C, seconds), ...])`` of a profile (module doc)."""
    base, script = 500, []
    for part in text.split(","):
        fields = part.strip().split(":")
        what = fields[0]
        try:
            if what == "steady" and len(fields) == 2:
                base = round(float(fields[1]) * 100)
                continue
            if what in _TEMPERATURES and len(fields) == 3:
                script.append((what, round(float(fields[1]) * 100), int(float(fields[2]) * 60)))
                continue
            if what in _FAULTY and len(fields) == 2:
                script.append((what, 0, int(float(fields[1]) * 60)))
                continue
        except ValueError:
            pass
        raise ValueError(f"bad profile segment {part!r}: want what[:degrees]:minutes")
    return base, script


class SimulatedSensor:
    """A DS18B20 following a scripted profile (module doc), from ``start`` seconds."""

    def __init__(self, profile: str = "steady:5.0", start: float = 0.0) -> None:
        self.base, self.script = parse_profile(profile)
        self.start = start

    def read(self, now: float) -> bytes | None:
        elapsed = now - self.start
        for what, centi, seconds in self.script:
            if elapsed < seconds:
                return self._pad(what, centi)
            elapsed -= seconds
        return self._pad("steady", self.base)

    @staticmethod
    def _pad(what: str, centi: int) -> bytes | None:
        if what == "none":
            return None
        if what == "reset":
            return scratchpad(RESET_RAW)
        if what == "range":
            return scratchpad(RANGE_RAW)
        pad = scratchpad(round(centi * 16 / 100))
        if what == "crc":
            return pad[:8] + bytes([pad[8] ^ 0x5A])
        return pad


class Ds18b20:
    """The first DS18B20 on a 1-Wire pin (a board only: ``machine``, ``onewire``)."""

    def __init__(self, pin: int) -> None:
        import ds18x20  # MicroPython's drivers
        import machine
        import onewire

        self._bus = ds18x20.DS18X20(onewire.OneWire(machine.Pin(pin)))

    def read(self, now: float) -> bytes | None:
        """Convert and read the scratchpad (blocks ~750 ms: the part's conversion time)."""
        import time

        try:
            roms = self._bus.scan()
            if not roms:
                return None
            self._bus.convert_temp()
            time.sleep_ms(750)  # type: ignore[attr-defined]
            ow = self._bus.ow
            ow.reset(True)
            ow.select_rom(roms[0])
            ow.writebyte(0xBE)  # read scratchpad, CRC included: decode() checks it
            pad = bytearray(9)
            ow.readinto(pad)
            return bytes(pad)
        except Exception:  # onewire.OneWireError (no presence pulse) or OSError: no answer
            return None
