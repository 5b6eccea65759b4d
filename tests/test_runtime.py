"""``haven-kiosk run``: configuration, sd_notify, shutdown, the page server's HTTP, staff."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from device import config as kconfig
from device.runtime import sd_notify
from device.store import Store, init_store
from device.ui.pin import hash_pin

from .test_ui_helpers import ROOT, free_port, run_kiosk

BOUND = 20.0
#: The staff PIN 246810 as ``haven-kiosk staff-pin set --print`` gives it.
HASH = hash_pin("246810")


def call(url: str, path: str, body: Any = None, headers: dict[str, str] | None = None,
         raw: bytes | None = None) -> tuple[int, dict[str, str], Any]:
    data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
    req = urllib.request.Request(url.rstrip("/") + path, data=data, headers={
        "Content-Type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(req, timeout=BOUND) as resp:
            status, hdrs, text = resp.status, dict(resp.headers), resp.read()
    except urllib.error.HTTPError as exc:
        status, hdrs, text = exc.code, dict(exc.headers), exc.read()
    try:
        return status, hdrs, json.loads(text)
    except ValueError:
        return status, hdrs, text


def test_config_file_under_flags(tmp_path: Path) -> None:
    f = tmp_path / "kiosk.toml"
    f.write_text('data = "/srv/k"\nhub = ["tcp://a:1", "tcp://b:2"]\nidle_seconds = 30\n'
                 f'staff_pin = "{HASH}"\nui = "0.0.0.0:9000"\n')
    cfg = kconfig.load(f, {"ui": "127.0.0.1:8081", "hub": None, "idle_seconds": None})
    assert cfg.data == Path("/srv/k") and cfg.hub == ["tcp://a:1", "tcp://b:2"]
    assert cfg.ui_address() == ("127.0.0.1", 8081) and cfg.idle_seconds == 30
    assert cfg.staff_pin == HASH
    cfg = kconfig.load(f, {"hub": ["tcp://c:3"]})
    assert cfg.hub == ["tcp://c:3"]


@pytest.mark.parametrize("text", ['colour = "red"\n', 'idle_seconds = "soon"\n',
                                  'hub = "tcp://a:1"\n', "data = [\n", 'ui = "nohost"\n'])
def test_bad_config_is_refused(tmp_path: Path, text: str) -> None:
    f = tmp_path / "kiosk.toml"
    f.write_text('data = "/srv/k"\n' + text if not text.startswith("data") else text)
    with pytest.raises(kconfig.ConfigError):
        kconfig.load(f, {})


def test_run_refuses_bad_config_with_status_2(tmp_path: Path) -> None:
    f = tmp_path / "kiosk.toml"
    f.write_text("colour = 1\n")
    r = subprocess.run([sys.executable, "-m", "device.cli", "run", "--config", str(f)],
                       capture_output=True, text=True, timeout=BOUND, cwd=ROOT)
    assert r.returncode == 2 and "unknown key 'colour'" in r.stderr


def notify_socket(tmp_path: Path) -> socket.socket:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.bind(str(tmp_path / "notify"))
    s.settimeout(BOUND)
    return s


def test_sd_notify_plain_datagram(tmp_path: Path) -> None:
    with notify_socket(tmp_path) as s:
        assert sd_notify("READY=1", {"NOTIFY_SOCKET": str(tmp_path / "notify")})
        assert s.recv(256) == b"READY=1"
    assert not sd_notify("READY=1", {})
    name = f"haven-test-{os.getpid()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
        s.bind("\0" + name)
        s.settimeout(BOUND)
        assert sd_notify("WATCHDOG=1", {"NOTIFY_SOCKET": "@" + name})
        assert s.recv(256) == b"WATCHDOG=1"


def test_run_notifies_serves_and_stops_on_sigterm(tmp_path: Path) -> None:
    init_store(tmp_path / "k", "North", "B").close()
    with notify_socket(tmp_path) as s:
        proc, url = run_kiosk(tmp_path / "k", f"tcp://127.0.0.1:{free_port()}", idle=60, env={
            "NOTIFY_SOCKET": str(tmp_path / "notify"), "WATCHDOG_USEC": "200000"})
        try:
            got = {s.recv(256).split(b"\n")[0] for _ in range(2)}
            assert got == {b"READY=1", b"WATCHDOG=1"}
            status, hdrs, body = call(url, "/api/checkin", {
                "passport": "AB123456", "year": "1970", "name": "Sig Term",
                "reason": "medicine", "consent": True})
            assert status == 200 and body["queue_number"] == "B-001"
            proc.p.send_signal(signal.SIGTERM)
            assert proc.p.wait(BOUND) == 0
            msgs = set()
            while b"STOPPING=1" not in msgs:
                msgs.add(s.recv(256))
        finally:
            proc.stop()
    with Store(tmp_path / "k") as store:
        assert b"B-001" in store.dump()


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """A kiosk holding a prescription held for review (two concurrent edits)."""
    tmp = tmp_path_factory.mktemp("served")
    with init_store(tmp / "other", "North", "A") as a, init_store(tmp / "k", "North", "B") as b:
        rx = a.put("prescription", values={"medication": "amoxicillin", "status": "active"})
        b.merge(a.deltas_since({}))
        a.put("prescription", rx, {"dosageInstruction": "500 mg twice daily"})
        b.put("prescription", rx, {"dosageInstruction": "250 mg three times daily"})
        b.merge(a.deltas_since({}))
        assert b.view(rx).held  # type: ignore[union-attr]
        b.checkin(name="Queue Person", passport="QQ123456", birth_year=1960, reason="injury")
    proc, url = run_kiosk(tmp / "k", f"tcp://127.0.0.1:{free_port()}", idle=60)
    yield url, rx
    proc.stop()


def test_every_response_is_no_store(served: Any) -> None:
    url, _ = served
    for path in ("/", "/static/app.js", "/static/fonts/DejaVuSans.ttf", "/api/config",
                 "/nowhere", "/static/../device/cli.py"):
        status, hdrs, _ = call(url, path)
        assert hdrs["Cache-Control"] == "no-store", path
        assert status == (404 if "." * 2 in path or path == "/nowhere" else 200), path


@pytest.mark.parametrize(("body", "code"), [
    ({"passport": "x", "year": "1980"}, "bad-passport"),
    ({"passport": "AB<script>", "year": "1980"}, "bad-passport"),
    ({"passport": "AB123456", "year": "19"}, "bad-year"),
    ({"passport": "AB123456", "year": "2999"}, "bad-year"),
    ({"passport": ["AB123456"], "year": 1980}, "bad-passport"),
])
def test_junk_gets_a_code_the_page_translates(served: Any, body: Any, code: str) -> None:
    status, _, answer = call(served[0], "/api/verify", body)
    assert (status, answer["error"]) == (400, code)


def test_checkin_refuses_bad_names_and_missing_consent(served: Any) -> None:
    base = {"year": "1980", "reason": "sick", "consent": True}
    for name in ("", "<b>x</b>", "a" * 81, "Robert'); DROP TABLE"):
        status, _, answer = call(served[0], "/api/checkin", {**base, "name": name})
        assert (status, answer["error"]) == (400, "bad-name"), name
    status, _, answer = call(served[0], "/api/checkin", {**base, "name": "Ok Name",
                                                         "consent": False})
    assert (status, answer["error"]) == (400, "no-consent")
    assert call(served[0], "/api/checkin", raw=b"{nope")[0] == 400
    assert call(served[0], "/api/checkin", raw=b"x" * 20000)[0] == 413


def test_staff_screen_needs_the_pin_and_resolves(served: Any) -> None:
    url, rx = served
    assert call(url, "/api/staff/overview")[0] == 403
    status, _, answer = call(url, "/api/staff/login", {"pin": "0000"})
    assert (status, answer["error"]) == (403, "bad-pin")
    status, _, answer = call(url, "/api/staff/login", {"pin": "246810"})
    assert status == 200
    token = answer["token"]
    status, _, view = call(url, "/api/staff/overview", headers={"X-Staff-Token": token})
    assert status == 200
    assert [q["number"] for q in view["queue"]] == ["B-001"]
    assert "Queue Person" not in json.dumps(view["queue"])  # names only where staff confirm
    assert [(c["claim"]["name"], c["identity"]) for c in view["identity"]] == [
        ("Queue Person", "unknown")]
    [held] = view["conflicts"]
    assert held["record_id"] == rx and held["type"] == "prescription"
    doses = {v["fields"]["dosageInstruction"]: v["id"] for v in held["versions"]}
    keep = doses["500 mg twice daily"]
    status, _, answer = call(url, "/api/staff/resolve",
                             {"token": token, "conflict": held["id"], "keep": keep})
    assert (status, answer["record_id"]) == (200, rx)
    _, _, view = call(url, "/api/staff/overview", headers={"X-Staff-Token": token})
    assert view["conflicts"] == []
    call(url, "/api/staff/logout", {"token": token})
    assert call(url, "/api/staff/overview", headers={"X-Staff-Token": token})[0] == 403


def test_simulated_button_and_led(served: Any) -> None:
    url, _ = served
    # The kiosk starts on "pending"; it is not enrolled, so its first round shows an error.
    end = time.monotonic() + BOUND
    while True:
        status, _, state = call(url, "/api/hw")
        assert status == 200 and state["simulated"] is True
        if state["led"] != "pending" or time.monotonic() > end:
            break
        time.sleep(0.05)
    assert state["led"] == "error"
    status, _, state = call(url, "/api/hw/press", {"seconds": 0.1})
    assert status == 200 and state["button"] is False


def test_deploy_files() -> None:
    unit = (ROOT / "deploy" / "haven-kiosk.service").read_text()
    for line in ("Type=notify", "WatchdogSec=", "NotifyAccess=main", "Restart=always",
                 "ExecStart=/usr/local/bin/haven-kiosk run --config /etc/haven/kiosk.toml"):
        assert line in unit
    launcher = ROOT / "deploy" / "kiosk-browser.sh"
    assert subprocess.run(["sh", "-n", str(launcher)], timeout=BOUND).returncode == 0
    text = launcher.read_text()
    assert "--kiosk" in text and "--user-data-dir=\"$PROFILE\"" in text and "tmpfs" in text
    assert '"password_manager_enabled": false' in text
    policy = json.loads((ROOT / "deploy" / "chromium-policy.json").read_text())
    assert policy["PasswordManagerEnabled"] is False and policy["AutofillAddressEnabled"] is False
    example = ROOT / "deploy" / "kiosk.toml.example"
    assert kconfig.load(example, {}).hub
