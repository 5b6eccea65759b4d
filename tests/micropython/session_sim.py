"""Two Sessions (IK, two lanes) on a simulated lossy line, the same run under either
interpreter: prints what happened, which tests/test_micropython_session.py requires to be
the same line for line under MicroPython and CPython. At ``RECONNECT`` the node
handshakes again and resumes the session, which the open kiosk takes over with its lanes.

The line: 50 ms each way; a frame is dropped by a seeded generator of our own (so both
interpreters drop the same frames), and everything sent during an outage is lost. The
ephemeral keys differ between runs, so nothing printed depends on a frame's bytes: events,
when they happened (simulated time, microseconds), and the counters of both ends.
"""

from protocol.crypto import X25519PrivateKey
from protocol.session.core import Closed, Connected, MessageReceived, Session, SessionConfig

DELAY = 0.05
LOSS = 0.1
OUTAGE = (20.0, 45.0)
RECONNECT = 70.0  #: the node handshakes again and resumes (a new link, say)
END = 150.0


class Lcg:
    """A 64-bit linear congruential generator (Knuth's MMIX constants)."""

    def __init__(self, seed):
        self.state = seed

    def next(self):
        self.state = (self.state * 6364136223846793005 + 1442695040888963407) % (1 << 64)
        return self.state >> 11

    def below(self, p):
        return self.next() < p * (1 << 53)


def keys(seed):
    return X25519PrivateKey.from_private_bytes(bytes([seed]) * 32)


def main():
    node_key, kiosk_key = keys(1), keys(2)
    config = SessionConfig(pattern="IK", lanes=2, keepalive=5.0, dead_timeout=60.0)
    node = Session(initiator=True, config=config, static_key=node_key,
                   remote_static=kiosk_key.public_key().public_bytes_raw())
    kiosk = Session(initiator=False, config=SessionConfig(pattern="IK", lanes=2, keepalive=5.0,
                                                          dead_timeout=60.0),
                    static_key=kiosk_key, accept_static=lambda key: True)
    ends = (("node", node), ("kiosk", kiosk))
    rng = Lcg(18)
    data_rng = Lcg(7)
    in_flight = []  # (arrival, seq, to, frame)
    seq = 0
    sent_readings = 0
    now = 0.0
    out = []
    reconnected = False
    while now < END:
        if not reconnected and now >= RECONNECT:
            node.reconnect(now)
            reconnected = True
        # The node queues a reading every second and an alarm every 30 s.
        while sent_readings < int(now) + 1 and sent_readings < 100:
            size = 200 + data_rng.next() % 600
            node.send_message(1, bytes([sent_readings % 256]) * size)
            if sent_readings % 30 == 0:
                node.send_message(0, b"alarm %d" % sent_readings)
            sent_readings += 1
        for _, end in ends:
            to = kiosk if end is node else node
            blob = end.data_to_send(now)
            for frame in blob.split(b"\x00"):
                if not frame:
                    continue
                if OUTAGE[0] <= now < OUTAGE[1] or rng.below(LOSS):
                    continue
                seq += 1
                in_flight.append((now + DELAY, seq, to, frame + b"\x00"))
        in_flight.sort(key=lambda x: (x[0], x[1]))
        while in_flight and in_flight[0][0] <= now:
            _, _, to, frame = in_flight.pop(0)
            to.receive_data(frame, now)
        for name, end in ends:
            while True:
                event = end.next_event()
                if event is None:
                    break
                stamp = round(now * 1e6)
                if isinstance(event, Connected):
                    out.append(f"{stamp} {name} connected resumed={event.resumed}")
                elif isinstance(event, MessageReceived):
                    if event.lane == 0 or event.data[0] % 50 == 0:
                        out.append(f"{stamp} {name} message {event.lane} {len(event.data)}")
                    if end is kiosk and event.lane == 0:
                        kiosk.send_message(0, b"ack " + event.data)
                elif isinstance(event, Closed):
                    out.append(f"{stamp} {name} closed {event.reason}")
        times = [t for t in (node.next_deadline(), kiosk.next_deadline()) if t is not None]
        times += [in_flight[0][0]] if in_flight else []
        times.append(float(int(now) + 1))  # the next reading, or the reconnection
        later = min(times)
        now = later if later > now else now + 1e-3
    for line in out:
        print(line)
    for name, end in ends:
        s = end.stats
        print(name, end.state, "frames", s.frames_sent, s.frames_received, "lost", s.lost_frames,
              "timeouts", s.timeouts, "retransmitted", s.retransmitted_bytes,
              "data", s.data_bytes_sent, "acked", end.all_acked)


main()
