"""``haven tech provision``: a fresh kiosk given its identity, under presence and a code.

Theory of operation
-------------------
SPEC.md "Provisioning". ``provision`` runs the technician's side:

1. Online (``hub``), the hub is asked first (``ask_hub``: ``prov-ask`` on its
   sync port, over a Haven session keyed by the technician's credential): it
   refuses a revoked, expired or out-of-scope credential before the kiosk is
   touched, and answers its current revocation list, which goes to the kiosk,
   and its time, which the kiosk is given instead of the laptop's.
   Offline (``approvals``), the first approval of the file that the
   technician's log (``host.tech_log``) does not show as used; an approval
   used already is refused here (the hub catches one used on another laptop
   at that kiosk's first sync).
2. A session with the kiosk's console (``ProvisionClient``: the session and
   the kiosk's challenge, no welcome: a fresh kiosk checks no credential the
   usual way). The tool draws its SAS nonce and sends its commitment with the
   credential (``provision-begin``); the kiosk asks for its service button
   (the tool prints the kiosk's note) and answers its own nonce.
3. ``provision-reveal``: the kiosk shows the code; the tool computes its own
   and asks the technician to type the code the kiosk's screen shows
   (``code``: given beforehand, for scripts). Only a code that matches the
   tool's own goes to the kiosk (``provision-confirm``), which checks it again;
   on a mismatch the tool tells the kiosk to stop without sending what was
   typed (if a device stands between, that is the real kiosk's code, which it
   must never learn), and says a device may stand between it and the kiosk.
4. Offline, the kiosk installed the approval; online, the kiosk's request goes
   to the hub (``prov-ask`` with it) and the certificate back to the kiosk
   (``provision-install``) in the same session.
"""

from __future__ import annotations

import argparse
import contextlib
import secrets
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from host import tech_log
from host.errors import HavenError, PeerRefused, PeerSilent, UsageError
from host.progress import Progress
from host.tech.client import TechClient
from protocol import messages, sas
from protocol import tech_messages as tm
from protocol.driver.errors import LinkError
from protocol.driver.link import open_link
from protocol.driver.session_driver import SessionDriver, session_config
from protocol.errors import ProtocolError
from protocol.session.events import Closed, Connected, MessageReceived
from protocol.sync import approval as sync_approval
from protocol.sync import (
    credential,
    provisioning,  # noqa: F401  (registers prov-ask and its answers)
)

#: Headroom over the kiosk's presence window for the begin's answer.
PRESENCE_SLACK = 15.0
DEFAULT_WINDOW = 60.0


class ProvisionRefused(HavenError):
    exit_code = 1


@dataclass
class Outcome:
    kiosk: str
    site: str
    letter: str | None
    number: int | None
    certificate: int | None  #: the certificate's serial (online); None offline
    approval: int | None  #: the approval's serial (offline)
    clock: str = ""  #: what the kiosk did with its clock
    code: str = ""  #: the short code both ends showed


class ProvisionClient(TechClient):
    """A session with a fresh kiosk's console: no welcome (``TechClient.connect``
    needs one), only the session and its id, which the short code is bound to."""

    session_id: bytes = b""

    def open_session(self) -> bytes:
        try:
            self._link = open_link(self.port, self.baud, exclusive=True)
        except LinkError as exc:
            raise UsageError(f"cannot open {self.port}: {exc}") from None
        config = session_config(stream=self._link.stream, baud=self.baud, pattern="XX",
                                keepalive=2.0, dead_timeout=max(self.timeout, 5.0),
                                send_buffer=256 * 1024)
        key = X25519PrivateKey.from_private_bytes(
            tm.x25519_private(self.cred.key.private_bytes_raw()))
        self._driver = SessionDriver(initiator=True, config=config, static_key=key,
                                     link=self._link)
        end = time.monotonic() + self.timeout
        while not self.session_id:
            for event in self._poll(end, "no kiosk answers on {port}: is it the kiosk's "
                                         "console port, and its runtime running?"):
                if isinstance(event, Connected):
                    self.session_id = event.session_id
        self._wait(lambda m: m.name == "tech-challenge", end)
        return self.session_id


# The hub -------------------------------------------------------------------------------

def ask_hub(url: str, cred: credential.CredentialFile, site: str,
            request: bytes | None = None, *, timeout: float = 10.0) -> dict[str, Any]:
    """One ``prov-ask`` to the hub at ``url`` (its sync port); the answer's fields, or
    ``ProvisionRefused`` / ``PeerSilent`` / ``UsageError`` in one line."""
    try:
        link = open_link(url, None)
    except LinkError as exc:
        raise UsageError(f"cannot reach the hub at {url}: {exc}") from None
    key = X25519PrivateKey.from_private_bytes(tm.x25519_private(cred.key.private_bytes_raw()))
    config = session_config(stream=link.stream, pattern="XX", keepalive=2.0,
                            dead_timeout=max(timeout, 5.0), max_message=1 << 16)
    driver = SessionDriver(initiator=True, config=config, static_key=key, link=link)
    values: dict[str, Any] = {"cert": cred.certificate, "site": site}
    if request is not None:
        values["request"] = request
    end = time.monotonic() + timeout
    try:
        while time.monotonic() < end:
            for event in driver.poll(0.1):
                if isinstance(event, Connected):
                    driver.send(0, messages.encode(messages.make("prov-ask", **values)))
                elif isinstance(event, MessageReceived):
                    msg = messages.decode(event.data)
                    if msg.name == "prov-refused":
                        raise ProvisionRefused(f"the hub refused ({msg.get('code')}): "
                                               f"{msg.get('reason')}")
                    if msg.name == "prov-answer":
                        return {name: msg.get(name) for name in ("revocations", "time", "cert")}
                elif isinstance(event, Closed):
                    raise ProvisionRefused(f"the hub at {url} closed the session "
                                           f"({event.reason}: {event.detail})")
        raise PeerSilent(f"the hub at {url} did not answer in {timeout:g} s")
    except LinkError as exc:
        raise HavenError(f"the hub at {url}: {exc}") from None
    except ProtocolError as exc:
        raise HavenError(f"the hub at {url} answered what this tool cannot read: {exc}") \
            from None
    finally:
        with contextlib.suppress(LinkError):
            driver.close(linger=0.1)
        link.close()


# Approvals -----------------------------------------------------------------------------

def used_approvals(log_path: Path | None = None) -> set[int]:
    """The approvals this laptop's technician's log shows as used."""
    out = set()
    for entry in tech_log.read(log_path).entries:
        detail = entry.get("detail") or {}
        if entry.get("action") == "provision" and entry.get("result") == "ok" \
                and isinstance(detail.get("approval"), int):
            out.add(detail["approval"])
    return out


def pick_approval(path: Path, hub_ed25519: bytes, now_ms: int,
                  log_path: Path | None = None) -> sync_approval.Approval:
    """The first approval of the file not used and not expired; ``UsageError`` if none."""
    try:
        docs = sync_approval.load_file(path.read_bytes())
    except FileNotFoundError:
        raise UsageError(f"{path}: no such approvals file") from None
    except OSError as exc:
        raise UsageError(f"cannot read {path}: {exc.strerror}") from None
    except ProtocolError as exc:
        raise UsageError(f"{path}: {exc}") from None
    used = used_approvals(log_path)
    seen: list[str] = []
    for doc in docs:
        try:
            ap = sync_approval.read_approval(doc, hub_ed25519, now_ms)
        except ProtocolError as exc:
            seen.append(str(exc))
            continue
        if ap.serial in used:
            seen.append(f"approval {ap.serial} was used already")
            continue
        return ap
    raise UsageError(f"{path}: no approval left to use ({'; '.join(seen) or 'empty'})")


# The whole run -------------------------------------------------------------------------

def provision(port: str, cred: credential.CredentialFile, *, hub: str | None = None,
              approvals: Path | None = None, site: str | None = None,
              hub_urls: list[str] | None = None, modems: list[str] | None = None,
              code: str | None = None, ask_code: Callable[[str], str] | None = None,
              note: Callable[[str], None] = print, window: float = DEFAULT_WINDOW,
              baud: int | None = None, timeout: float = 10.0,
              log_path: Path | None = None, entry: tech_log.Action | None = None) -> Outcome:
    """Provision the fresh kiosk on ``port`` (see the module docstring). ``code``: the
    code the kiosk shows, given beforehand; else ``ask_code(ours)`` asks for it."""
    if (hub is None) == (approvals is None):
        raise UsageError("give --hub URL (online) or --approval FILE (offline)")
    now_ms = int(time.time() * 1000)
    revocations = cred.revocations
    ap = None
    if hub is not None:
        if not site:
            raise UsageError("online provisioning names the kiosk's site: --site S")
        vouched = ask_hub(hub, cred, site, timeout=timeout)
        revocations = vouched["revocations"]
        # the fleet's clock rather than the laptop's: the kiosk will sync to it anyway
        now_ms = vouched["time"]
    else:
        assert approvals is not None
        ap = pick_approval(approvals, cred.hub_ed25519, now_ms, log_path)
        if site is not None and site != ap.site:
            raise UsageError(f"approval {ap.serial} is for site {ap.site!r}, not {site!r}")
        site = ap.site
    assert site is not None
    if entry is not None:
        entry.detail = {"site": site, **({"approval": ap.serial} if ap else {})}
    client = ProvisionClient(port, cred, baud=baud, timeout=timeout,
                             on_note=lambda text: note(f"kiosk: {text}"))
    try:
        session = client.open_session()
        nonce_i = secrets.token_bytes(sas.NONCE_BYTES)
        begin: dict[str, Any] = {"cert": cred.certificate, "hub": cred.hub_ed25519,
                                 "commit": sas.commit(session, nonce_i), "time": now_ms}
        if revocations is not None:
            begin["revocations"] = revocations
        # Offline, the approval goes only with the right code (confirm): a device standing
        # in for the kiosk learns its site and kiosk id, never the approval it could use.
        begin["site"] = ap.site if ap is not None else site
        if ap is not None:
            begin["kiosk"] = ap.device_id
        started = client.call("provision-begin", begin, timeout=window + PRESENCE_SLACK)
        if entry is not None:
            entry.kiosk = started.get("kiosk")
            entry.serial = credential.read_technician(cred.certificate, cred.hub_ed25519).serial
        ours = sas.code(session, nonce_i, started["nonce"])
        client.call("provision-reveal", {"nonce": nonce_i})
        typed = code if code is not None else (ask_code or _ask)(ours)
        confirm: dict[str, Any] = {"code": typed, "hub_urls": list(hub_urls or []),
                                   "modem": list(modems or [])}
        if not sas.matches(ours, typed):
            # The kiosk is told to stop, without the code typed: if a device stands
            # between, the code typed is the real kiosk's, which it must never learn.
            with contextlib.suppress(HavenError):
                client.call("provision-confirm", {**confirm, "code": ""})
            raise ProvisionRefused(f"the kiosk's code is not {sas.display(ours)}: another "
                                   "device may stand between this tool and the kiosk; "
                                   "provisioning stopped")
        if ap is not None:
            confirm["approval"] = ap.raw
        done = client.call("provision-confirm", confirm)
        if ap is not None:
            return Outcome(done["kiosk"], done["site"], done["letter"], done["number"], None,
                           ap.serial, done.get("clock", ""), ours)
        assert hub is not None
        issued = ask_hub(hub, cred, site, done["request"], timeout=timeout)["cert"]
        if issued is None:
            raise HavenError("the hub answered no certificate")
        got = client.call("provision-install", {"cert": issued})
        return Outcome(got["kiosk"], got["site"], got["letter"], got["number"],
                       got["certificate"], None, got.get("clock", ""), ours)
    finally:
        client.close()


# The tool never shows its own code: a technician who copied it from the laptop's screen
# would defeat the comparison. It asks for the kiosk's, and compares (``provision``).
ASK = "the kiosk's screen shows a 6-digit code now: type it here: "


def _ask(ours: str) -> str:
    if not sys.stdin.isatty():
        raise UsageError("no terminal to type the kiosk's code: give --sas CODE")
    return input(ASK)


def _read_line(ours: str) -> str:
    print(ASK, flush=True)
    return sys.stdin.readline().strip()


# The command line ----------------------------------------------------------------------

def add_arguments(p: argparse.ArgumentParser) -> None:
    how = p.add_mutually_exclusive_group(required=True)
    how.add_argument("--hub", metavar="URL", help="online: the hub's sync port "
                     "(tcp://HOST:PORT), which enrols the kiosk now")
    how.add_argument("--approval", type=Path, metavar="FILE", help="offline: approvals from "
                     "haven hub approve; the first one not used yet is taken")
    p.add_argument("--site", help="the kiosk's site (online; offline the approval's)")
    p.add_argument("--hub-url", action="append", default=[], metavar="URL", dest="hub_urls",
                   help="a hub URL the kiosk syncs with (repeat for several)")
    p.add_argument("--modem", action="append", default=[], metavar="URL",
                   help="a serial hub URL whose modem drives carrier detect")
    p.add_argument("--sas", metavar="CODE", help="the code the kiosk's screen shows, for "
                   "scripts: CODE, or - to read it from a line of standard input once the "
                   "kiosk shows it; without it the tool asks on the terminal")
    p.add_argument("--window", type=float, default=DEFAULT_WINDOW, metavar="S",
                   help="how long to wait for the kiosk's service button (the kiosk's own "
                   "window decides)")


def run(args: argparse.Namespace, client_for: Callable[[argparse.Namespace], Any]) -> int:
    from host.tech.cli import load_credential

    cred = load_credential(args.credential)
    progress: Progress = args.progress
    with tech_log.logged("provision", port=args.port) as entry:
        try:
            out = provision(args.port, cred, hub=args.hub, approvals=args.approval,
                            site=args.site, hub_urls=args.hub_urls, modems=args.modem,
                            code=None if args.sas == "-" else args.sas,
                            ask_code=_read_line if args.sas == "-" else None,
                            note=progress.note, window=args.window,
                            baud=args.baud, timeout=args.timeout, entry=entry)
        except PeerRefused as exc:
            raise ProvisionRefused(str(exc)) from None
        finally:
            progress.end()
        entry.kiosk = out.kiosk
        how = (f"approval {out.approval} (its certificate comes with its first sync)"
               if out.approval is not None else f"certificate {out.certificate}")
        result = {"kiosk": out.kiosk, "site": out.site, "letter": out.letter,
                  "number": out.number, "certificate": out.certificate,
                  "approval": out.approval, "clock": out.clock}
        if args.json:
            import json
            print(json.dumps(result, sort_keys=True))
        else:
            print(f"kiosk {out.kiosk} provisioned: site {out.site!r}, letter {out.letter}, "
                  f"number {out.number}, {how}; clock {out.clock}")
    return 0


def register() -> None:
    from host.tech.cli import SUBCOMMANDS

    SUBCOMMANDS["provision"] = (add_arguments, run, "provision a fresh kiosk (presence, a "
                                "code, the hub's approval)")
