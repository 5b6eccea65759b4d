"""Feeding a console demultiplexer and reading its SMP packets, under either interpreter:
tests/test_smp_codec.py (CPython) and tests/micropython/vectors_smp.py (both) share them."""

from protocol.smp import demux
from protocol.smp.demux import Demux, SmpPacket


def packets_of(events: list[demux.Event]) -> list[bytes]:
    return [e.data for e in events if isinstance(e, SmpPacket)]


def feed_bytewise(d: Demux, data: bytes) -> list[demux.Event]:
    out: list[demux.Event] = []
    for i in range(len(data)):
        out += d.feed(data[i : i + 1])
    return out
