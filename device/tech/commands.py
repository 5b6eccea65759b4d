"""The commands of ``haven tech`` after provisioning: status, config, time, restart, hw, pull.

Each is a ``device.tech.service`` command (the registry there explains the
contract): ``status`` and ``pull`` need the certificate's ``read`` action,
``config set`` and a clock set ``configure``, ``restart`` ``restart``, and the
hardware test ``configure`` (it takes over the LED and buzzer for a moment).
The service audits each one; handlers add the audit entry's detail (keys and
names, never a value a patient typed).

- ``status``: ``TechEnv.status()`` (the runtime's views) with the uptime, the
  data disk, the RSS and the temperature where ``/sys/class/thermal`` has one.
- ``config``: ``op`` get or set, ``key``, ``value`` (text, parsed by the
  option's type). ``set`` checks the value with ``device.config``'s own
  checks, writes the file atomically (the line of that key replaced, the rest
  of the file as it was), reads the whole file back through
  ``config.read_file``, and says whether the key takes effect live or
  restarts the runtime (graceful, through the restart hook, once the reply
  has been acknowledged): nothing is lost, every record is in SQLite.
- ``time``: the kiosk's clock and trusted time; with ``set`` (the tool's
  clock, ms) the clock is set from the tool only when the kiosk has no better
  source: exact trusted time wins; a lower bound refuses a tool clock behind it.
- ``restart``: graceful, after the reply.
- ``hw``: LED patterns, a beep, then a button press awaited (``timeout``).
- ``pull``: a file of the export directory, as a transfer (``Outgoing``).
"""

from __future__ import annotations

import contextlib
import json
import os
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from device import config
from device.tech.service import CommandError, Context, Outgoing, command, pieces_of, read_at
from protocol.errors import LocalProtocolError
from protocol.manifest import build_manifest, check_name

THERMAL = Path("/sys/class/thermal")
#: Options the runtime reads again at each use: set live, no restart.
LIVE_KEYS = frozenset({"health_interval", "round_limit"})
#: Options a technician's tool may not set: where the data lives, the staff PIN's
#: hash (``haven-kiosk staff-pin set`` at the kiosk keeps it), the console port itself
#: and its speed (changed, the runtime's restart would leave the tool without a port, or
#: at a speed it does not know), the hardware (simulated pins would let presence be
#: asserted through the page's /api/hw/press rather than the kiosk's own button), the
#: presence check's hold and window, and the hub key of the kiosk's image: what physical
#: presence and the image vouch for is not changed from the cable.
FIXED_KEYS = frozenset({"data", "staff_pin", "console", "console_baud", "hardware",
                        "hub_key", "provision_hold", "provision_window"})
#: Options whose value a tool never reads: the staff PIN's hash would let a short PIN be
#: found offline. ``config get`` says only whether one is set.
SECRET_KEYS = frozenset({"staff_pin"})
HIDDEN = "(set, not shown)"
MAX_WAIT = 60.0  #: the longest button wait a tool may ask for
READ_SIZE = 1 << 20


# status ----------------------------------------------------------------------------------

def temperature() -> float | None:
    """The first thermal zone's temperature in °C, or None without one."""
    for zone in sorted(THERMAL.glob("thermal_zone*")):
        with contextlib.suppress(OSError, ValueError):
            return int((zone / "temp").read_text().strip()) / 1000.0
    return None


def rss_kib() -> int:
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    scale = 1 if sys.platform == "darwin" else 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale // 1024


@command("status", action="read")
def status(ctx: Context, args: dict[str, Any]) -> dict[str, Any]:
    env = ctx.env
    out: dict[str, Any] = {"version": env.console.version,
                           "uptime_s": round(time.monotonic() - env.started, 1),
                           "rss_kib": rss_kib()}
    with contextlib.suppress(OSError):
        disk = shutil.disk_usage(env.console.export_dir.parent)
        out["disk"] = {"total_kib": disk.total // 1024, "free_kib": disk.free // 1024}
    celsius = temperature()
    if celsius is not None:
        out["temperature_c"] = celsius
    out.update(env.status())
    return dict(_jsonable(out))


def _jsonable(value: Any) -> Any:
    """``value`` as CBOR and JSON both carry it: maps with text keys, lists, scalars."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if value is None or isinstance(value, bool | int | float | str | bytes):
        return value
    return str(value)


# config ----------------------------------------------------------------------------------

def parse_value(key: str, text: str) -> Any:
    """``text`` as option ``key``'s value, checked by ``device.config``; ``CommandError``
    (``bad-key``, ``bad-value``) with a one-line reason otherwise."""
    spec = config.OPTIONS.get(key)
    if spec is None:
        raise CommandError("bad-key", config._unknown(key))
    if spec.kind is list:
        raw: Any = [part.strip() for part in text.split(",") if part.strip()]
    else:
        try:
            raw = spec.kind(text)
        except ValueError:
            raise CommandError("bad-value", f"{key}: expected {config._KIND_NAMES[spec.kind]}"
                               f", not {text!r}") from None
    value, why = spec.check(raw)
    if why:
        raise CommandError("bad-value", f"{key} {why}")
    return value


def toml_value(value: Any) -> str:
    if isinstance(value, list):
        return "[" + ", ".join(json.dumps(v) for v in value) + "]"
    if isinstance(value, str | Path):
        return json.dumps(str(value))  # a JSON string is a TOML basic string
    return repr(value)


def with_key(text: str, key: str, value: Any) -> str:
    """``text`` (a TOML file) with ``key`` set to ``value``: its line replaced where it
    has one, else appended (into the ``[kiosk]`` table, which is then the only one)."""
    line = f"{key} = {toml_value(value)}"
    n = config._line_of(text, key)
    lines = text.splitlines()
    if n is None:
        return text + ("" if not text or text.endswith("\n") else "\n") + line + "\n"
    lines[n - 1] = line
    return "\n".join(lines) + "\n"


def write_atomically(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        with contextlib.suppress(OSError):
            os.chmod(tmp, path.stat().st_mode & 0o777)
        # The whole file as the runtime will read it, checks across keys included
        # (link_carrier naming hub URLs); the data directory may come from a flag.
        config.load(Path(tmp), {"data": Path("/")})
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    dfd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


def _config_file(ctx: Context) -> Path:
    path = ctx.env.config_file
    if path is None:
        raise CommandError("no-config-file", "this kiosk runs without a configuration file "
                           "(haven-kiosk run --config FILE): nothing to change")
    return path


@command("config", action="read")
def config_command(ctx: Context, args: dict[str, Any]) -> dict[str, Any]:
    op, key = args.get("op"), args.get("key")
    if not isinstance(key, str) or op not in ("get", "set"):
        raise CommandError("bad-args", "config takes get KEY or set KEY VALUE")
    ctx.what = f"tech.config.{op}"
    ctx.detail["key"] = key[:60]
    spec = config.OPTIONS.get(key)
    if spec is None:
        raise CommandError("bad-key", config._unknown(key))
    path = ctx.env.config_file
    in_file: dict[str, Any] = {}
    if path is not None and path.exists():
        try:
            in_file = config.read_file(path)
        except config.ConfigError as exc:
            raise CommandError("bad-file", str(exc)) from None
    live = ctx.env.extra.get("config")
    running = getattr(live, key, spec.default) if live is not None else None
    if op == "get":
        if key in SECRET_KEYS:
            in_file = {key: HIDDEN} if in_file.get(key) is not None else {}
            running = HIDDEN if running is not None else None
        return dict(_jsonable({"key": key, "file": in_file.get(key), "running": running,
                               "default": spec.default, "restart": key not in LIVE_KEYS}))
    techs = ctx.technicians
    if ctx.accepted is None or techs is None \
            or not techs.still_good(ctx.accepted.tech, "configure"):
        raise CommandError("not-allowed", "the credential does not allow configure")
    if key in FIXED_KEYS:
        raise CommandError("fixed-key", f"{key} is not set from a technician's tool")
    text = args.get("value")
    if not isinstance(text, str):
        raise CommandError("bad-args", "config set KEY VALUE")
    value = parse_value(key, text)
    path = _config_file(ctx)
    try:
        old = path.read_text("utf-8") if path.exists() else ""
        write_atomically(path, with_key(old, key, value))
    except config.ConfigError as exc:
        raise CommandError("bad-value", str(exc)) from None
    except OSError as exc:
        raise CommandError("write-failed", f"cannot write {path}: {exc.strerror}") from None
    restart = key not in LIVE_KEYS
    if not restart and live is not None:
        setattr(live, key, value)
    elif restart:
        ctx.after_reply.append(ctx.env.console.restart)
    return dict(_jsonable({"key": key, "value": value,
                           "applied": "restarting the runtime" if restart else "live"}))


# time ------------------------------------------------------------------------------------

@command("time", action="read")
def time_command(ctx: Context, args: dict[str, Any]) -> dict[str, Any]:
    techs = ctx.technicians
    trusted = techs.clock.now() if techs is not None else None
    wall_ms = int(ctx.env.console.wall() * 1000)
    out: dict[str, Any] = {"kiosk_ms": wall_ms,
                           "trusted": None if trusted is None else {
                               "ms": trusted.ms, "source": trusted.source,
                               "exact": trusted.exact, "describe": trusted.describe()}}
    tool_ms = args.get("set")
    if tool_ms is None:
        return out
    ctx.what = "tech.time.set"
    if type(tool_ms) is not int or tool_ms <= 0:
        raise CommandError("bad-args", "time set takes the tool's clock in ms")
    if techs is None or ctx.accepted is None \
            or not techs.still_good(ctx.accepted.tech, "configure"):
        raise CommandError("not-allowed", "the credential does not allow configure")
    set_wall = ctx.env.console.set_wall
    if trusted is not None and trusted.exact:
        target, source = trusted.ms, trusted.source  # the hub's time beats the tool's
    elif trusted is not None and tool_ms < trusted.ms:
        raise CommandError("tool-clock-behind", "the tool's clock is behind the kiosk's "
                           f"trusted lower bound ({trusted.describe()}): check the laptop's "
                           "clock")
    else:
        target, source = tool_ms, "tool"
    if set_wall is None:
        raise CommandError("cannot-set", "the kiosk's service may not set its clock")
    try:
        set_wall(target / 1000.0)
    except OSError as exc:
        raise CommandError("cannot-set", f"the clock was not set: {exc.strerror or exc}") \
            from None
    ctx.detail.update(source=source, moved_s=round((target - wall_ms) / 1000))
    return {**out, "set_ms": target, "source": source}


# restart ---------------------------------------------------------------------------------

@command("restart", action="restart")
def restart(ctx: Context, args: dict[str, Any]) -> dict[str, Any]:
    ctx.after_reply.append(ctx.env.console.restart)
    return {"restarting": True}


# hw test ---------------------------------------------------------------------------------

@command("hw", action="configure")
def hw_test(ctx: Context, args: dict[str, Any]) -> dict[str, Any]:
    from device.hardware.panel import PATTERNS

    hardware = ctx.env.hardware()
    if hardware is None:
        raise CommandError("no-hardware", "this kiosk has no LED, button or buzzer")
    wait = args.get("timeout", 10.0)
    if not isinstance(wait, int | float) or not 0 < wait <= MAX_WAIT:
        raise CommandError("bad-args", f"the button wait is 0 to {MAX_WAIT:g} s")
    step = args.get("step", 1.0)
    if isinstance(step, bool) or not isinstance(step, int | float) or not 0 <= step <= 5:
        raise CommandError("bad-args", "each LED pattern shows 0 to 5 s")
    ctx.what = "tech.hw.test"
    before = hardware.led.pattern
    shown: list[str] = []
    try:
        for pattern in PATTERNS:
            ctx.note(f"LED: {pattern}")
            hardware.led.show(pattern)
            shown.append(pattern)
            time.sleep(step)
    finally:
        if before is not None:
            hardware.led.show(before)
    ctx.note("buzzer: one beep")
    hardware.chime.checkin()
    ctx.note(f"press the service button (within {wait:g} s)")
    pressed = hardware.button.wait_for_press(float(wait))
    ctx.detail["pressed"] = pressed
    return {"led": shown, "buzzer": True, "button": pressed,
            "simulated": bool(hardware.simulated)}


# pull ------------------------------------------------------------------------------------

@command("pull", action="read")
def pull(ctx: Context, args: dict[str, Any]) -> Outgoing:
    name = args.get("name")
    if not isinstance(name, str):
        raise CommandError("bad-args", "pull NAME")
    ctx.detail["file"] = name[:100]
    try:
        check_name(name)
    except LocalProtocolError as exc:
        raise CommandError("bad-name", str(exc)) from None
    root = ctx.env.console.export_dir
    path = root / name
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except FileNotFoundError:
        raise CommandError("no-file", f"no file {name!r} in the export directory") from None
    except OSError as exc:
        raise CommandError("no-file", f"{name}: {exc.strerror}") from None
    try:
        if not os.path.isfile(path) or path.resolve().parent != root.resolve():
            raise CommandError("no-file", f"{name} is not a file of the export directory")

        manifest = build_manifest(pieces_of(fd, READ_SIZE), name)
    except BaseException:
        os.close(fd)
        raise
    ctx.detail["size"] = manifest.size
    return Outgoing(manifest, read_at(fd),
                    {"name": name, "size": manifest.size,
                     "sha256": manifest.object_hash.hex()},
                    close=lambda: os.close(fd))
