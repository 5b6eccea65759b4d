"""Two Sessions on a simulated lossy line, the same run under either interpreter: prints
what happened, which tests/test_micropython_session.py requires to be the same line for
line under MicroPython and CPython.

Usage: ``session_sim.py SCENARIO``, one of ``SCENARIOS``:

* ``resume``: IK; at ``RECONNECT`` the node handshakes again and resumes the session,
  which the open kiosk takes over with its lanes;
* ``restart``: IK; at ``RECONNECT`` the node starts over (a new Session, as after a
  reboot): the open kiosk takes the new session over, fresh lanes;
* ``timeout``: XX; the outage outlasts ``dead_timeout``, both ends close (``timeout``),
  and both start new sessions when the line is back;
* ``paced``: IK paced at 11,520 bytes/s (115,200 baud), as a node's serial line.

The line: 50 ms each way; a frame is dropped by a seeded generator of our own (so both
interpreters drop the same frames), and everything sent during an outage is lost. The
ephemeral keys and resume secrets come from a seeded generator too, so every byte on the
line is the same in every run: it prints the SHA-256 of what each end wrote, besides the
events, when they happened (simulated time, microseconds), and the counters of both ends.
"""

import hashlib
import sys

from protocol.crypto import X25519PrivateKey
from protocol.session import handshakes
from protocol.session.core import Closed, Connected, MessageReceived, Session, SessionConfig

SCENARIOS = ("resume", "restart", "timeout", "paced")
DELAY = 0.05
LOSS = 0.1
RECONNECT = 70.0
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


_secrets = Lcg(99)


def _secret(n=32):
    return bytes(_secrets.next() & 0xFF for _ in range(n))


# Seeded ephemeral keys and resume secrets: the same bytes on the line in every run.
X25519PrivateKey.generate = classmethod(lambda cls: cls.from_private_bytes(_secret()))
handshakes.secrets.token_bytes = _secret


class Run:
    def __init__(self, scenario):
        self.scenario = scenario
        self.pattern = "XX" if scenario == "timeout" else "IK"
        self.outage = (20.0, 95.0) if scenario == "timeout" else (20.0, 45.0)
        self.node_key, self.kiosk_key = keys(1), keys(2)
        self.node = self.new_node(0.0)
        self.kiosk = self.new_kiosk(0.0)
        self.out = []
        self.wrote = {"node": hashlib.sha256(), "kiosk": hashlib.sha256()}

    def config(self):
        return SessionConfig(pattern=self.pattern, lanes=2, keepalive=5.0, dead_timeout=60.0,
                             rate=11520.0 if self.scenario == "paced" else None)

    def new_node(self, now):
        pin = self.kiosk_key.public_key().public_bytes_raw() if self.pattern == "IK" else None
        return Session(initiator=True, config=self.config(), static_key=self.node_key,
                       remote_static=pin, now=now)

    def new_kiosk(self, now):
        return Session(initiator=False, config=self.config(), static_key=self.kiosk_key,
                       accept_static=lambda key: True, now=now)

    def ends(self):
        return (("node", self.node), ("kiosk", self.kiosk))

    def events(self, now):
        for name, end in self.ends():
            while True:
                event = end.next_event()
                if event is None:
                    break
                stamp = round(now * 1e6)
                if isinstance(event, Connected):
                    self.out.append(f"{stamp} {name} connected resumed={event.resumed}")
                elif isinstance(event, MessageReceived):
                    if event.lane == 0 or event.data[0] % 50 == 0:
                        self.out.append(f"{stamp} {name} message {event.lane} {len(event.data)}")
                    if end is self.kiosk and event.lane == 0:
                        self.kiosk.send_message(0, b"ack " + event.data)
                elif isinstance(event, Closed):
                    self.out.append(f"{stamp} {name} closed {event.reason}")

    def main(self):
        rng, data_rng = Lcg(18), Lcg(7)
        in_flight = []  # (arrival, seq, to, frame)
        seq = sent_readings = 0
        now = 0.0
        moved = False
        while now < END:
            if self.scenario == "resume" and not moved and now >= RECONNECT:
                self.node.reconnect(now)
                moved = True
            elif self.scenario == "restart" and not moved and now >= RECONNECT:
                self.node = self.new_node(now)
                moved = True
            elif (self.scenario == "timeout" and now >= self.outage[1]
                  and self.node.state == "closed" and self.kiosk.state == "closed"):
                self.node, self.kiosk = self.new_node(now), self.new_kiosk(now)
            # The node queues a reading every second and an alarm every 30 s.
            while sent_readings < int(now) + 1 and sent_readings < 100:
                if self.node.state != "closed":
                    size = 200 + data_rng.next() % 600
                    self.node.send_message(1, bytes([sent_readings % 256]) * size)
                    if sent_readings % 30 == 0:
                        self.node.send_message(0, b"alarm %d" % sent_readings)
                sent_readings += 1
            for name, end in self.ends():
                to = self.kiosk if end is self.node else self.node
                blob = end.data_to_send(now)
                self.wrote[name].update(blob)
                for frame in blob.split(b"\x00"):
                    if not frame or self.outage[0] <= now < self.outage[1] or rng.below(LOSS):
                        continue
                    seq += 1
                    in_flight.append((now + DELAY, seq, to, frame + b"\x00"))
            in_flight.sort(key=lambda x: (x[0], x[1]))
            while in_flight and in_flight[0][0] <= now:
                _, _, to, frame = in_flight.pop(0)
                to.receive_data(frame, now)
            self.events(now)
            times = [t for t in (self.node.next_deadline(), self.kiosk.next_deadline())
                     if t is not None]
            times += [in_flight[0][0]] if in_flight else []
            times.append(float(int(now) + 1))  # the next reading, or a scenario's step
            later = min(times)
            now = later if later > now else now + 1e-3
        for line in self.out:
            print(line)
        for name, end in self.ends():
            s = end.stats
            print(name, end.state, "frames", s.frames_sent, s.frames_received, "lost",
                  s.lost_frames, "timeouts", s.timeouts, "retransmitted",
                  s.retransmitted_bytes, "data", s.data_bytes_sent, "takeovers", s.takeovers,
                  "acked", end.all_acked)
        for name in ("node", "kiosk"):
            print(name, "wrote", self.wrote[name].digest().hex())


Run(sys.argv[1]).main()
