"""``haven tech provision`` of a fresh kiosk through the emulated serial line.

A fresh kiosk's console (this process, its service button on gpiozero's
MockFactory, pressed when the tool says the kiosk asks) is provisioned offline
with an approval across the link emulator at 11,520 B/s each way (115200 baud
8N1): on a clean line, and at 1e-4 of the bytes corrupted with a 5 s outage in
the middle of the run. The goal: it completes, or fails cleanly (one line, the
kiosk unchanged) and succeeds when run again. Reported: the wire time (from the
session's first frame to the tool's last answer, presence and the technician's
typing aside) and the bytes on the line each way.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

from . import Context, Result, benchmark
from ._link import emulator
from .console import RATE

BAUD = RATE * 10
HOLD = 0.5  #: the kiosk's hold time here (3 s on a kiosk: it is not the line's)
OUTAGE = 1.5  #: seconds after the line opens when it is cut for 5 s


def _attempt(ctx: Context, root: Path, approvals: Path, cred: Any, tag: str,
             emu_args: list[str], limit: float, outage: float | None) -> dict[str, Any]:
    """One run; ``outage``: when the line is cut, seconds after the emulator starts."""
    from gpiozero.pins.mock import MockFactory

    from device import enrol
    from device.console.env import ConsoleEnv
    from device.console.server import ConsoleServer
    from device.hardware import panel as hw
    from device.store import init_store
    from device.tech.provision import EXTRA, Provisioner
    from device.tech.service import TechEnv, TechService
    from host.tech.provision import provision

    hardware = hw.Hardware(pin_factory=MockFactory())
    store = init_store(root / "kiosk", "Unset")
    shown: list[str | None] = []
    waited = [0.0]  #: the button held and the code typed: the technician's time
    started = [time.monotonic()]
    prov = Provisioner(store, pressed=lambda: hardware.button.is_pressed, hold=HOLD,
                       show_code=shown.append, set_wall=lambda _: None)
    console = ConsoleEnv(export_dir=root / "export", import_dir=root / "import", stats=dict,
                         restart=lambda: None)
    service = TechService(TechEnv(console=console, extra={EXTRA: prov}),
                          static_key=enrol.ensure_keys(store.data)[0], baud=BAUD)

    def press() -> None:
        pin = hardware.button.button.pin
        pin.drive_low()
        threading.Event().wait(HOLD + 0.1)
        pin.drive_high()

    def note(text: str) -> None:
        if "service button" in text:
            waited[0] += HOLD + 0.1
            threading.Thread(target=press, daemon=True).start()

    def screen(ours: str) -> str:
        """The technician types the code; with an outage, into it (the confirm crosses
        the line while it is cut)."""
        code = shown[-1]
        assert code is not None
        if outage is not None:
            pause = max(0.0, started[0] + outage + 0.2 - time.monotonic())
            waited[0] += pause
            time.sleep(pause)
        return code

    row: dict[str, Any] = {"attempt": tag}
    with emulator("serial", emu_args, ctx.workdir / f"stats-{tag}.json") as emu:
        started[0] = time.monotonic()
        server = ConsoleServer(emu.endpoints["a"], console, haven=service)
        server.start()
        t0 = time.monotonic()
        try:
            out = provision(emu.endpoints["b"], cred, approvals=approvals, ask_code=screen,
                            note=note, baud=BAUD, timeout=limit,
                            log_path=root / "tech.log")
            row["outcome"] = "ok" if out.kiosk == enrol.load(store.data).cert.device_id \
                else "WRONG"
            from host import tech_log

            tech_log.write("provision", "ok", detail={"approval": out.approval},
                           path=root / "tech.log")
        except Exception as exc:  # a clean failure: the row says which, the kiosk is checked
            row["outcome"] = f"failed: {type(exc).__name__}: {exc}"[:90]
        finally:
            row["seconds"] = round(time.monotonic() - t0 - waited[0], 1)
            prov.stop.set()
            server.stop()
            service.stop()
            hardware.close()
    if not row["outcome"].startswith("ok"):
        untouched = not any((store.data / n).exists() for n in (enrol.CERT, enrol.APPROVAL))
        row["kiosk_unchanged"] = untouched
    store.close()
    ab, ba = emu.stats.get("ab", {}), emu.stats.get("ba", {})
    row["bytes_to_tool"] = ab.get("bytes_in", 0)
    row["bytes_to_kiosk"] = ba.get("bytes_in", 0)
    return row


@benchmark("provision", "haven tech provision of a fresh kiosk at 115200 baud, clean and "
           "at 1e-4 with a 5 s outage")
def provision_bench(ctx: Context) -> Result:
    from host.hub import technician
    from host.hub.hub import Hub, init_hub
    from protocol.driver.wall_clock import wall_ms
    from protocol.sync import approval as sync_approval
    from protocol.sync import credential

    rows: list[dict[str, Any]] = []
    limit = 30.0
    for case, outage in (("clean", None), ("1e-4, 5 s outage", OUTAGE)):
        extra = [] if outage is None else ["--corrupt", "1e-4", "--outage", f"{outage}:5"]
        root = ctx.workdir / case.replace(" ", "_").replace(",", "")
        init_hub(root / "hub")
        with Hub(root / "hub") as hub:
            docs = hub.approve("North", 2, 24, wall_ms())
            _, doc = technician.issue(hub, name="Bench", sites=["North"])
        approvals = root / "north.approvals"
        approvals.write_bytes(sync_approval.dump_file(docs))
        cred = credential.load_file(doc)
        for attempt in (1, 2):
            tag = f"{case} #{attempt}"
            ctx.log(f"provision {tag}")
            args = ["--rate", str(RATE), "--seed", str(len(rows) + 1), *extra]
            row = _attempt(ctx, root, approvals, cred, tag, args, limit, outage)
            row["case"] = case
            ctx.log(str(row))
            rows.append(row)
            if row["outcome"] == "ok":
                break
    notes = [f"Offline provisioning (an approval) of a fresh kiosk through tools/linkemu.py "
             f"at {RATE:,} B/s each way (115200 baud 8N1): clean, and with 1e-4 of the bytes' "
             "bits flipped and the line cut for 5 s from 1.5 s after it opened, while the "
             "technician types the code (the confirm crosses the cut line). A failed "
             "attempt is run again on the same kiosk, as a technician would run the "
             "command again.",
             "seconds (the wire time): the command's time less the technician's (the "
             "button's hold, and typing until the cut); the outage is in it. bytes: on the "
             "line each way, retransmissions included."]
    columns = ["case", "attempt", "outcome", "seconds", "bytes_to_kiosk", "bytes_to_tool",
               "kiosk_unchanged"]
    return Result(rows, columns, notes, {"rate": RATE})
