"""Sync, kiosk to hub, beside CouchDB replication (pouchdb-server 4.2 + PouchDB 9).

The same seeded check-ins go both ways: ten fields each (the id, a
check-in's six, and the patient's name, birth date and gender), with real
UUIDs and ISO timestamps, about 281 bytes as a JSON document. PouchDB gets one
document per check-in; the kiosk stores the same values as its schema has
them: a patient record and a check-in record (``Store.put``), which is also
what a check-in at the kiosk writes.

* ``N check-ins over TCP``: the kiosk's outbox is pushed to ``haven hub
  serve`` (a separate process) in one ``run_round`` over a fresh session,
  handshake included; PouchDB replicates a memory database holding the same
  documents to ``pouchdb-server -m`` (``db.replicate.to``, default batch
  size). Both go through the same counting TCP relay on 127.0.0.1 written
  here, which counts every byte each way (HTTP headers and all, for
  PouchDB; frames, handshake and all, for us). Seconds are measured around
  the replication call and the round, in the client's process.
* ``one changed field``: after the first replication, one field of one
  record changes and is replicated again; for us in one more sync round on
  the same live session (pull, batch, ack, changes; the idle session then
  runs on for 0.3 s so the acknowledgement still owed is counted), and also
  as a round on a fresh session (with its handshake).
* ``over the emulator``: 1,000 check-ins through ``tools/linkemu`` serial at
  11,520 B/s (115200 baud 8N1) with 1e-4 byte errors both ways, the hub on
  ``--serial``: efficiency is the record JSON carried per second of line
  time, and the line's utilisation is the kiosk's bytes on the wire over
  seconds x rate.

pouchdb-server and PouchDB are installed by ``npm install`` into
bench-out/pouchdb on the first run (a few minutes: it compiles sqlite3).
"""

from __future__ import annotations

import contextlib
import json
import random
import selectors
import shutil
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from . import Context, Result, benchmark

ROOT = Path(__file__).resolve().parents[2]
POUCH_DIR = ROOT / "bench-out" / "pouchdb"
POUCH_PACKAGES = (["pouchdb-server@4.2"], ["pouchdb@9", "pouchdb-adapter-memory@9"])
RATE = 11520
TIMEOUT = 600.0
FIRST = ["Amina", "Kofi", "Leila", "Tomas", "Nadia", "Jonas", "Mei", "Ravi", "Sara", "Ivan",
         "Grace", "Omar", "Fatima", "Peter", "Aisha", "Daniel"]
LAST = ["Diallo", "Mensah", "Haddad", "Silva", "Rahman", "Berg", "Chen", "Patel", "Okafor",
        "Petrov", "Mwangi", "Nkosi", "Kamau", "Otieno", "Banda", "Phiri"]
REASONS = ["fever", "cough", "follow-up", "vaccination", "headache", "prenatal", "injury",
           "diarrhoea", "hypertension review", "diabetes review"]


# Records ------------------------------------------------------------------------------


def records(n: int, seed: int = 1) -> list[dict[str, str]]:
    """``n`` check-ins, ten fields each with the id, seeded."""
    rng = random.Random(seed)
    t0 = 1_795_000_000  # 2026-11
    out = []
    for i in range(n):
        start = time.gmtime(t0 + i * 37 + rng.randrange(30))
        born = f"{rng.randrange(1940, 2024)}-{rng.randrange(1, 13):02d}-{rng.randrange(1, 29):02d}"
        out.append({
            "_id": str(uuid.UUID(int=rng.getrandbits(128), version=4)),
            "subject": str(uuid.UUID(int=rng.getrandbits(128), version=4)),
            "status": "arrived",
            "reasonCode": rng.choice(REASONS),
            "periodStart": time.strftime("%Y-%m-%dT%H:%M:%SZ", start),
            "location": "Riverside",
            "queueNumber": f"A-{i % 1000:03d}",
            "name": f"{rng.choice(FIRST)} {rng.choice(LAST)}",
            "birthDate": born,
            "gender": rng.choice(["female", "male"]),
        })
    return out


CHECKIN = ("subject", "status", "reasonCode", "periodStart", "location", "queueNumber")
PATIENT = ("name", "birthDate", "gender")


def json_bytes(docs: list[dict[str, str]]) -> int:
    return sum(len(json.dumps(d, separators=(",", ":")).encode()) for d in docs)


def put_records(store: Any, docs: list[dict[str, str]]) -> None:
    for d in docs:
        store.put("patient", d["subject"], {k: d[k] for k in PATIENT})
        store.put("checkin", d["_id"], {k: d[k] for k in CHECKIN})


# A counting TCP relay -----------------------------------------------------------------


class Relay:
    """Forwards 127.0.0.1:port to a target and counts the bytes each way."""

    def __init__(self, target: int) -> None:
        self.target = target
        self.up = self.down = 0  # client -> server, server -> client
        self.connections = 0
        self.lock = threading.Lock()
        self.srv = socket.create_server(("127.0.0.1", 0))
        self.port = int(self.srv.getsockname()[1])
        self.stop = False
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def counts(self) -> tuple[int, int]:
        with self.lock:
            return self.up, self.down

    def _accept(self) -> None:
        self.srv.settimeout(0.2)
        while not self.stop:
            try:
                client, _ = self.srv.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            try:
                server = socket.create_connection(("127.0.0.1", self.target), timeout=10)
            except OSError:
                client.close()
                continue
            for s in (client, server):
                s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self.connections += 1
            threading.Thread(target=self._pump, args=(client, server), daemon=True).start()

    def _pump(self, client: socket.socket, server: socket.socket) -> None:
        sel = selectors.DefaultSelector()
        sel.register(client, selectors.EVENT_READ, (server, True))
        sel.register(server, selectors.EVENT_READ, (client, False))
        open_ = 2
        try:
            while open_ and not self.stop:
                for key, _ in sel.select(0.5):
                    other, up = key.data
                    sock: socket.socket = key.fileobj  # type: ignore[assignment]
                    try:
                        data = sock.recv(65536)
                    except OSError:
                        data = b""
                    if not data:
                        sel.unregister(sock)
                        open_ -= 1
                        with contextlib.suppress(OSError):
                            other.shutdown(socket.SHUT_WR)
                        continue
                    with self.lock:
                        if up:
                            self.up += len(data)
                        else:
                            self.down += len(data)
                    with contextlib.suppress(OSError):
                        other.sendall(data)
        finally:
            client.close()
            server.close()

    def close(self) -> None:
        self.stop = True
        self.srv.close()
        self.thread.join(2)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, proc: subprocess.Popen[Any], limit: float = 60.0) -> None:
    end = time.monotonic() + limit
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args!r} exited with {proc.returncode}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1):
            return
        time.sleep(0.1)
    raise RuntimeError(f"nothing listens on {port}")


@contextmanager
def process(args: list[str], cwd: Path, log: Path) -> Iterator[subprocess.Popen[bytes]]:
    with log.open("wb") as out:
        proc = subprocess.Popen(args, cwd=cwd, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
        try:
            yield proc
        finally:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)


# PouchDB ------------------------------------------------------------------------------


def ensure_pouchdb(log: Callable[[str], None]) -> Path | None:
    """Install pouchdb-server and PouchDB under bench-out/pouchdb (once); None if npm fails."""
    server = POUCH_DIR / "node_modules" / ".bin" / "pouchdb-server"
    client = POUCH_DIR / "node_modules" / "pouchdb-adapter-memory"
    if server.exists() and client.exists():
        return POUCH_DIR
    if shutil.which("npm") is None:
        log("npm is missing: the PouchDB peer cannot run")
        return None
    POUCH_DIR.mkdir(parents=True, exist_ok=True)
    if not (POUCH_DIR / "package.json").exists():
        (POUCH_DIR / "package.json").write_text('{"name": "bench-pouchdb", "private": true}\n')
    for pkgs in POUCH_PACKAGES:
        log(f"npm install {' '.join(pkgs)} (a few minutes the first time)")
        done = subprocess.run(["npm", "install", "--no-audit", "--no-fund", *pkgs],
                              cwd=POUCH_DIR, capture_output=True, text=True, timeout=900)
        if done.returncode != 0:
            log(f"npm install failed: {done.stderr.strip()[-500:]}")
            return None
    return POUCH_DIR if server.exists() and client.exists() else None


NODE_SCRIPT = r"""
const PouchDB = require('pouchdb');
PouchDB.plugin(require('pouchdb-adapter-memory'));
const fs = require('fs');
const readline = require('readline');
const [docsFile, url, name] = process.argv.slice(2);
const rl = readline.createInterface({input: process.stdin});
const lines = rl[Symbol.asyncIterator]();
(async () => {
  const docs = JSON.parse(fs.readFileSync(docsFile, 'utf8'));
  const db = new PouchDB(name, {adapter: 'memory'});
  await db.bulkDocs(docs);
  const remote = new PouchDB(url + '/' + name);
  console.log(JSON.stringify({ready: true}));
  await lines.next();
  let t0 = process.hrtime.bigint();
  let r = await db.replicate.to(remote);
  let ms = Number(process.hrtime.bigint() - t0) / 1e6;
  console.log(JSON.stringify({phase: 'all', ms, written: r.docs_written}));
  await lines.next();
  const doc = await db.get(docs[0]._id);
  doc.reasonCode = 'changed reason';
  await db.put(doc);
  t0 = process.hrtime.bigint();
  r = await db.replicate.to(remote);
  ms = Number(process.hrtime.bigint() - t0) / 1e6;
  console.log(JSON.stringify({phase: 'one', ms, written: r.docs_written}));
  process.exit(0);
})().catch((e) => { console.error(e); process.exit(1); });
"""


def pouch_case(ctx: Context, pouch: Path, docs: list[dict[str, str]], name: str
               ) -> dict[str, Any]:
    port = free_port()
    script = ctx.workdir / "replicate.js"
    script.write_text(NODE_SCRIPT)
    docs_file = ctx.workdir / f"{name}.json"
    docs_file.write_text(json.dumps(docs))
    server = [str(pouch / "node_modules" / ".bin" / "pouchdb-server"), "-o", "127.0.0.1",
              "-p", str(port), "-m", "-n"]
    with process(server, ctx.workdir, ctx.workdir / f"pouchdb-server-{name}.log") as srv:
        wait_port(port, srv)
        relay = Relay(port)
        node = subprocess.Popen(["node", str(script), str(docs_file),
                                 f"http://127.0.0.1:{relay.port}", name],
                                cwd=pouch, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                text=True, env={"NODE_PATH": str(pouch / "node_modules"),
                                                "PATH": "/usr/bin:/bin"})
        try:
            assert node.stdin is not None and node.stdout is not None

            def step() -> dict[str, Any]:
                assert node.stdin is not None and node.stdout is not None
                node.stdin.write("go\n")
                node.stdin.flush()
                line = node.stdout.readline()
                if not line:
                    raise RuntimeError("the PouchDB script failed")
                return dict(json.loads(line))

            json.loads(node.stdout.readline())  # ready: documents loaded, remote named
            before = relay.counts()
            full = step()
            mid = relay.counts()
            one = step()
            end = relay.counts()
            node.wait(TIMEOUT)
        finally:
            if node.poll() is None:
                node.kill()
                node.wait()
            relay.close()
    return {"up": mid[0] - before[0], "down": mid[1] - before[1], "s": full["ms"] / 1000,
            "written": full["written"], "one_up": end[0] - mid[0], "one_down": end[1] - mid[1],
            "one_s": one["ms"] / 1000}


# Haven --------------------------------------------------------------------------------


def kiosk_and_hub(work: Path, docs: list[dict[str, str]]) -> tuple[Path, Any, Any, Any]:
    from device import enrol
    from device.store import init_store
    from device.sync.state import SyncState
    from host.hub.hub import Hub, init_hub

    init_hub(work / "hub")
    store = init_store(work / "kiosk", "Riverside", "A")
    with Hub(work / "hub") as hub:
        cert = hub.enroll(enrol.write_request(store).read_bytes())
    enrol.install(store, cert)
    put_records(store, docs)
    return work / "hub", store, SyncState(store.data), enrol.load(store.data)


@contextmanager
def hub_serving(hub_dir: Path, args: list[str], log: Path) -> Iterator[subprocess.Popen[bytes]]:
    cmd = [sys.executable, "-m", "host.cli", "hub", "serve", "--data", str(hub_dir), *args]
    with process(cmd, ROOT, log) as proc:
        yield proc


class LiveRounds:
    """Sync rounds one after another on one live session (the kiosk's driver, kept open)."""

    def __init__(self, store: Any, state: Any, ident: Any, url: str) -> None:
        from device.sync.engine import kiosk_driver
        from protocol.driver.link import open_link

        self.store, self.state, self.ident = store, state, ident
        self.link = open_link(url)
        self.driver = kiosk_driver(ident, self.link)
        self.connected = False
        self.msg_up = self.msg_down = 0  #: sync message bytes, before the session's framing

    def round(self, limit: float = TIMEOUT) -> Any:
        from device.sync.engine import Round
        from protocol.session.events import Connected, MessageReceived

        rnd = Round(self.store, self.state, self.ident)
        if self.connected:
            # The hub knows this kiosk from the session's hello: a round on a live
            # session is a pull from the cursor and the next batch, as after the welcome.
            for lane, msg in rnd.again():
                self.msg_up += len(msg)
                self.driver.send(lane, msg)
        end = time.monotonic() + limit
        while not rnd.done:
            if time.monotonic() > end:
                raise RuntimeError("the round took too long")
            for event in self._step(0.1):
                replies: list[tuple[int, bytes]] = []
                if isinstance(event, Connected):
                    self.connected = True
                    replies = rnd.hello()
                elif isinstance(event, MessageReceived):
                    self.msg_down += len(event.data)
                    replies = rnd.on_message(event.data)
                for lane, msg in replies:
                    self.msg_up += len(msg)
                    self.driver.send(lane, msg)
        self.driver.flush()
        return rnd.summary

    def settle(self, seconds: float) -> None:
        """Keep the idle session running for ``seconds``, as a live loop does, so what
        the round still owes (the acknowledgement of its last frame, after the ack
        delay) goes out and is counted with it; then let the relay pass it on."""
        from protocol.session.events import MessageReceived

        end = time.monotonic() + seconds
        while time.monotonic() < end:
            if any(isinstance(e, MessageReceived) for e in self._step(end - time.monotonic())):
                raise RuntimeError("a message arrived on the idle session")
        time.sleep(0.1)

    def _step(self, most: float) -> list[Any]:
        """One turn of the driver (``most`` seconds of waiting at most): its events."""
        from protocol.driver.session_driver import LinkClosed
        from protocol.session.events import Closed

        events = self.driver.poll(max(0.0, most))
        for event in events:
            if isinstance(event, Closed):
                raise RuntimeError(f"session closed: {event.reason} {event.detail}")
            if isinstance(event, LinkClosed):
                raise RuntimeError("the hub closed the connection")
        return events

    def close(self) -> None:
        self.driver.close("done")
        self.link.close()


def haven_case(ctx: Context, docs: list[dict[str, str]], name: str) -> dict[str, Any]:
    from device.sync.engine import run_round

    work = ctx.workdir / f"haven-{name}"
    hub_dir, store, state, ident = kiosk_and_hub(work, docs)
    port = free_port()
    try:
        with hub_serving(hub_dir, ["--listen", f"tcp://127.0.0.1:{port}"],
                         work / "hub.log") as hub:
            wait_port(port, hub)
            relay = Relay(port)
            url = f"tcp://127.0.0.1:{relay.port}"
            try:
                live = LiveRounds(store, state, ident, url)
                before = relay.counts()
                t0 = time.perf_counter()
                s = live.round()
                seconds = time.perf_counter() - t0
                live.settle(0.3)
                mid = relay.counts()
                store.put("checkin", docs[0]["_id"], {"reasonCode": "changed reason"})
                live.msg_up = live.msg_down = 0
                t1 = time.perf_counter()
                one = live.round()
                one_msgs = (live.msg_up, live.msg_down)
                one_s = time.perf_counter() - t1
                live.settle(0.3)
                end = relay.counts()
                live.close()
                # The same edit again, on a fresh session (handshake and close included).
                store.put("checkin", docs[0]["_id"], {"reasonCode": "changed again"})
                time.sleep(0.3)
                fresh0 = relay.counts()
                fresh = run_round(store, state, ident, url, limit=TIMEOUT)
                time.sleep(0.3)
                fresh1 = relay.counts()
            finally:
                relay.close()
    finally:
        state.close()
        store.close()
    assert s.pushed == 2 * len(docs) and one.pushed == 1 and fresh.pushed == 1
    return {"up": mid[0] - before[0], "down": mid[1] - before[1], "s": seconds,
            "one_up": end[0] - mid[0], "one_down": end[1] - mid[1], "one_s": one_s,
            "one_msg_up": one_msgs[0], "one_msg_down": one_msgs[1],
            "fresh_up": fresh1[0] - fresh0[0], "fresh_down": fresh1[1] - fresh0[1],
            "batches": s.batches}


def serial_case(ctx: Context, docs: list[dict[str, str]]) -> dict[str, Any]:
    from device.sync.engine import run_round

    from ._link import emulator

    work = ctx.workdir / "haven-serial"
    hub_dir, store, state, ident = kiosk_and_hub(work, docs)
    emu_args = ["--rate", str(RATE), "--corrupt", "1e-4", "--seed", "3"]
    try:
        with emulator("serial", emu_args, work / "emu.json") as emu, \
                hub_serving(hub_dir, ["--serial", emu.endpoints["a"], "--baud", "115200"],
                            work / "hub.log"):
            time.sleep(1.0)  # the hub opens its port
            t0 = time.perf_counter()
            s = run_round(store, state, ident, emu.endpoints["b"], baud=115200, limit=TIMEOUT)
            seconds = time.perf_counter() - t0
    finally:
        state.close()
        store.close()
    assert s.pushed == 2 * len(docs)
    st = emu.stats
    return {"s": seconds, "up": st["ba"]["bytes_in"], "down": st["ab"]["bytes_in"],
            "corrupted": st["ab"]["corrupted"] + st["ba"]["corrupted"]}


def _row(what: str, haven: Any, pouch: Any, goal: str, met: bool | None,
         ratio: float | None = None) -> dict[str, Any]:
    if ratio is None and isinstance(haven, int | float) and isinstance(pouch, int | float) \
            and pouch:
        ratio = round(haven / pouch, 3)
    return {"what": what, "haven": haven, "pouchdb": pouch, "ratio": ratio, "goal": goal,
            "met": met}


@benchmark("sync", "Sync kiosk to hub beside CouchDB replication (PouchDB 9 to pouchdb-server)")
def sync_benchmark(ctx: Context) -> Result:
    sizes = [1000] if ctx.quick else [1000, 10_000]
    pouch = ensure_pouchdb(ctx.log)
    rows: list[dict[str, Any]] = []
    notes = [
        "Records: seeded check-ins, ten fields each (a UUID id, subject, status, "
        "reasonCode, periodStart, location, queueNumber, name, birthDate, gender); PouchDB "
        "stores each as one JSON document, the kiosk as a patient and a check-in record, "
        "which is what a check-in at the kiosk writes. Bytes are counted "
        "by one TCP relay on 127.0.0.1 for both, every byte each way; seconds around "
        "`replicate.to()` and around our round (session handshake included).",
    ]
    one_case: tuple[dict[str, Any], dict[str, Any] | None] | None = None
    for n in sizes:
        docs = records(n, seed=n)
        size = json_bytes(docs)
        ctx.log(f"{n} check-ins, {size:,} B of JSON ({size / n:.0f} B each)")
        ours = haven_case(ctx, docs, str(n))
        ctx.log(f"haven: {ours}")
        theirs = pouch_case(ctx, pouch, docs, f"bench{n}") if pouch else None
        ctx.log(f"pouchdb: {theirs}")
        if one_case is None:
            one_case = (ours, theirs)
        tb = theirs["up"] + theirs["down"] if theirs else None
        ob = ours["up"] + ours["down"]
        rows.append(_row(f"{n:,} check-ins ({size:,} B JSON): bytes up", ours["up"],
                         theirs and theirs["up"], "", None))
        rows.append(_row(f"{n:,} check-ins: bytes down", ours["down"],
                         theirs and theirs["down"], "", None))
        rows.append(_row(f"{n:,} check-ins: bytes both ways", ob, tb, "<= 0.15x",
                         None if tb is None else ob <= 0.15 * tb))
        rows.append(_row(f"{n:,} check-ins: seconds", round(ours["s"], 3),
                         theirs and round(theirs["s"], 3), "<= 0.5x",
                         None if theirs is None else ours["s"] <= 0.5 * theirs["s"]))
    assert one_case is not None
    ours, theirs = one_case
    ob = ours["one_up"] + ours["one_down"]
    tb = theirs["one_up"] + theirs["one_down"] if theirs else None
    rows.append(_row("one changed field, live session: bytes up / down",
                     f"{ours['one_up']:,} / {ours['one_down']:,}",
                     theirs and f"{theirs['one_up']:,} / {theirs['one_down']:,}", "", None,
                     None))
    rows.append(_row("one changed field, live session: bytes both ways", ob, tb,
                     "<= 0.1x (456 B)", ob <= 456 if tb is None else ob <= 0.1 * tb))
    rows.append(_row("  of which sync messages up / down (the rest: session frames, tags, acks)",
                     f"{ours['one_msg_up']:,} / {ours['one_msg_down']:,}", None, "", None, None))
    fb = ours["fresh_up"] + ours["fresh_down"]
    rows.append(_row("one changed field, new session (handshake): bytes both ways", fb, tb,
                     "report", None))
    n = 1000
    docs = records(n, seed=n)
    ser = serial_case(ctx, docs)
    ctx.log(f"serial: {ser}")
    size = json_bytes(docs)
    rows.append({"what": f"{n:,} check-ins over linkemu, 11,520 B/s, 1e-4 byte errors: "
                 "seconds", "haven": round(ser["s"], 2), "pouchdb": None, "ratio": None,
                 "goal": "report", "met": None})
    rows.append({"what": "  record JSON carried per second of line time (efficiency)",
                 "haven": round(size / ser["s"] / RATE, 3), "pouchdb": None, "ratio": None,
                 "goal": "report", "met": None})
    rows.append({"what": "  line utilisation, kiosk to hub (wire bytes / (s x rate))",
                 "haven": round(ser["up"] / ser["s"] / RATE, 3), "pouchdb": None,
                 "ratio": None, "goal": "report", "met": None})
    rows.append({"what": "  bytes on the line up / down, bytes corrupted",
                 "haven": f"{ser['up']:,} / {ser['down']:,}, {ser['corrupted']}",
                 "pouchdb": None, "ratio": None, "goal": "", "met": None})
    notes.append("One changed field: PouchDB replicates again after `db.put`; we run one more "
                 "round on the session the first round used (a sync-pull from the cursor, one "
                 "batch of one delta, its ack, an empty page of changes, with the session's "
                 "own acks; after each round the idle session runs on for 0.3 s, as a live "
                 "loop does, so the acknowledgement it still owes is counted with its round), "
                 "and, for comparison, a round on a new session, whose handshake, hello and "
                 "close cost the rest.")
    if pouch is None:
        notes.append("PouchDB could not be installed (npm failed): no peer figures.")
    notes.append("PEERS.md measured PouchDB here before: 1,000 check-ins 486,452 B up and "
                 "53,969 B down in 0.81 s; 10,000: 4,861,083 B up, 535,870 B down, 4.79 s; "
                 "one changed field 2,377 B up and 2,186 B down.")
    return Result(rows=rows, columns=["what", "haven", "pouchdb", "ratio", "goal", "met"],
                  notes=notes, params={"sizes": sizes, "rate": RATE})
