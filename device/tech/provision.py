"""Provisioning a fresh kiosk from the technician's tool (SPEC.md "Provisioning").

Theory of operation
-------------------
A fresh kiosk knows no hub key, so no technician credential can be checked
the usual way (``device.tech.access``) and its console session with the tool
is unauthenticated. Four open commands of ``device.tech.service`` (open: they
run before any welcome) take it from there, one provisioning at a time and on
one session; each refusal changes nothing on the kiosk but its audit:

1. ``provision-begin`` (``cert``, ``hub``: the hub's Ed25519 key the tool brings
   from the credential file, ``commit``: the tool's SAS commitment,
   ``time``: the tool's clock, ms, ``site``, and offline ``kiosk``: the id the
   approval reserves, never the approval itself, which a device standing in for
   the kiosk could use; optionally ``revocations``): refused on a kiosk
   provisioned already. The
   certificate must be signed by that hub key, be the session's own key (its
   X25519 form is the session's remote static, which the Noise handshake
   proved the tool holds), allow ``provision``, cover the site (and the
   approval's kiosk), be unrevoked by the list the tool brings, and be within
   its window at the tool's time or any later hub-signed time the kiosk is
   shown (the approval's issue, the revocation list's). Then presence: the
   window opens and the service button must be held (``device.tech.presence``,
   ``window``/``hold`` configurable). Answer: the kiosk's SAS nonce.
2. ``provision-reveal`` (``nonce``): the tool's nonce, checked against its
   commitment; the kiosk computes the short code (``protocol.sas``) and shows it
   (``show_code``: the page, the console's log); nothing goes back but ok.
3. ``provision-confirm`` (``code``: what the technician read on the kiosk's
   screen and typed into the tool, ``hub_urls``, ``modem``, and ``approval``
   offline): a wrong code ends the provisioning (a new one needs a new press).
   A right one makes the hub key trusted: offline the kiosk installs the
   approval, checked again as at begin and against the site and kiosk begun
   (``device.enrol.install_approval``: its keys, its reserved identity,
   its request; the fleet key comes with its first sync); online it generates
   its keys and answers its enrolment request for the tool to take to the hub.
   The configuration (hub URLs, modems) is written, and the clock set from the
   tool if the kiosk has no better source.
4. ``provision-install`` (``cert``, online): the certificate the hub issued,
   checked against the trusted hub key and installed (``device.enrol.install``:
   the fleet key opens with the kiosk's own key).

The private keys never leave the kiosk. Every step is audited: who is
``presence`` until the credential is checked, then the certificate's serial.
"""

from __future__ import annotations

import logging
import secrets
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from device import audit
from device.enrol import APPROVAL, CERT, ensure_keys, install, install_approval
from device.store import Store, StoreError
from device.tech import presence as pres
from device.tech.service import CommandError, Context, RefusalBudget, command
from device.tech.trusted_time import TrustedClock
from protocol import sas
from protocol import tech_messages as tm
from protocol.errors import ProtocolError
from protocol.sync import approval as sync_approval
from protocol.sync import certificate as sync_cert
from protocol.sync import credential

log = logging.getLogger("haven.tech")

#: ``TechEnv.extra`` key of the kiosk's ``Provisioner``.
EXTRA = "provisioning"
MAX_URLS = 8


@dataclass
class _Run:
    """One provisioning in progress, on one session."""

    session: bytes
    tech: credential.Technician
    hub_ed25519: bytes
    site: str
    device_id: str
    tool_ms: int
    commit: bytes
    nonce_r: bytes
    #: Offline: the site and kiosk are the approval's, which comes only with the right code.
    offline: bool
    #: The credential's check's time at begin (lower bounds the tool showed), and the
    #: serials the tool's revocation list names: confirm checks the credential again.
    now: int
    revoked: frozenset[int]
    approval: sync_approval.Approval | None = None  #: offline, from confirm on
    code: str | None = None  #: shown once the tool revealed its nonce
    confirmed: bool = False  #: online: the code matched, the certificate is awaited
    hub_urls: list[str] = field(default_factory=list)  #: for the configuration, online
    modems: list[str] = field(default_factory=list)  #: written once the certificate is in


@dataclass
class Provisioner:
    """The kiosk's side of provisioning: its store, its button and its screen."""

    store: Store
    #: The service button's state now (``ServiceButton.is_pressed``); None: no button.
    pressed: Callable[[], bool] | None
    window: float = pres.WINDOW
    hold: float = pres.HOLD
    #: Show the short code on the kiosk (None: clear it); the runtime puts it on the page.
    show_code: Callable[[str | None], None] = lambda code: None
    #: Set the system clock (seconds since 1970); None: it cannot be set.
    set_wall: Callable[[float], None] | None = None
    config_file: Path | None = None
    #: The hub's X25519 key from the kiosk's image (config ``hub_key``): only that hub's
    #: approvals and certificates are taken. None: the key the credential brings.
    image_hub: bytes | None = None
    #: Seconds after the code is shown at which a run not finished is dropped (the
    #: technician went away, or the tool did): the code leaves the screen.
    abandon: float = 300.0
    run: _Run | None = None
    stop: threading.Event = field(default_factory=threading.Event)
    #: Refusals audited within a bound: a device on the cable may ask again and again.
    refusals: RefusalBudget = field(default_factory=RefusalBudget)

    @property
    def data(self) -> Path:
        return self.store.data

    def provisioned(self) -> bool:
        return (self.data / CERT).exists() or (self.data / APPROVAL).exists()

    def record(self, who: str, what: str, result: str,
               detail: dict[str, Any] | None = None) -> None:
        try:
            audit.record(self.store, who, what, result, detail)
        except Exception:  # the step stands or fails on its own; a lost entry is logged
            log.exception("provisioning step not audited: %s %s %s", who, what, result)

    def end(self) -> None:
        self.run = None
        self.show_code(None)


def _provisioner(ctx: Context) -> Provisioner:
    ctx.audited = True  # each step writes its own entries, by presence or the serial
    prov = ctx.env.extra.get(EXTRA)
    if prov is None and ctx.env.extra.get("runtime") is not None:
        prov = ctx.env.extra[EXTRA] = for_runtime(ctx.env.extra["runtime"],
                                                  ctx.env.config_file)
    if not isinstance(prov, Provisioner):
        raise CommandError("no-provisioning", "this kiosk's runtime does not provision")
    return prov


def for_runtime(runtime: Any, config_file: Path | None) -> Provisioner | None:
    """The runtime's provisioner: its store, its service button, the windows of its
    configuration, the code on its page and its log (the console's ``log show``),
    the clock set as the console's datetime set is. None before its store is open."""
    from device.console.runtime_env import _set_wall

    store = runtime.store
    if store is None:
        return None

    def pressed() -> bool:
        hardware = runtime.hardware
        return hardware is not None and bool(hardware.button.is_pressed)

    def show(code: str | None) -> None:
        text = None if code is None else f"provisioning code {sas.display(code)}"
        if text is not None:
            log.warning("%s (compare it with the technician's tool)", text)
        live = getattr(runtime, "live", None)
        if live is not None:  # on the page, over everything, until the run ends
            live.show_provision_code(code)

    cfg = runtime.cfg
    return Provisioner(store, pressed, window=cfg.provision_window, hold=cfg.provision_hold,
                       show_code=show, set_wall=_set_wall, config_file=config_file,
                       image_hub=bytes.fromhex(cfg.hub_key) if cfg.hub_key else None)


def _bytes(args: dict[str, Any], name: str, *, optional: bool = False) -> Any:
    value = args.get(name)
    if value is None and optional:
        return None
    if type(value) is not bytes:
        raise CommandError("bad-args", f"{name} must be bytes")
    return value


def _int(args: dict[str, Any], name: str) -> int:
    value = args.get(name)
    if type(value) is not int or value <= 0:
        raise CommandError("bad-args", f"{name} must be a positive integer")
    return value


def _urls(args: dict[str, Any], name: str) -> list[str]:
    value = args.get(name, [])
    if (not isinstance(value, list) or len(value) > MAX_URLS
            or not all(isinstance(v, str) and 0 < len(v) <= 200 and v.isprintable()
                       for v in value)):
        raise CommandError("bad-args", f"{name}: at most {MAX_URLS} URLs")
    return list(value)


def _session(ctx: Context, prov: Provisioner) -> _Run:
    run = prov.run
    if run is None or run.session != ctx.session_id:
        raise CommandError("no-provisioning", "no provisioning in progress on this session: "
                           "start again (provision-begin)")
    return run


def _refuse(prov: Provisioner, who: str, what: str, code: str, message: str,
            detail: dict[str, Any] | None = None) -> CommandError:
    audited, skipped = prov.refusals.take()
    if audited:
        prov.record(who, what, f"refused:{code}",
                    {**(detail or {}), "unaudited": skipped} if skipped else detail)
    log.info("provisioning refused (%s): %s", code, message)
    return CommandError(code, message)


# 1. begin: the credential, then presence ------------------------------------------------

@command("provision-begin", action=None)
def begin(ctx: Context, args: dict[str, Any]) -> dict[str, Any]:
    prov = _provisioner(ctx)
    ctx.what = "provision.begin"
    if prov.provisioned():
        raise _refuse(prov, audit.PRESENCE, ctx.what, "already-provisioned",
                      "this kiosk is provisioned already (haven tech wipe starts it over)")
    prov.end()
    cert, hub = _bytes(args, "cert"), _bytes(args, "hub")
    commitment, tool_ms = _bytes(args, "commit"), _int(args, "time")
    revocations = _bytes(args, "revocations", optional=True)
    who = audit.PRESENCE
    try:
        tech = credential.read_technician(cert, hub)
        who = str(tech.serial)
        if ctx.remote_static != tm.x25519_public(tech.ed25519):
            raise CommandError("key-mismatch", "the session's key is not the certificate's")
        # Hub-signed times the tool shows are lower bounds of the time: the tool's clock
        # cannot take a credential back before them.
        now = max(tool_ms, tech.not_before)
        revoked: frozenset[int] = frozenset()
        if revocations is not None:
            listed = credential.read_revocations(revocations, hub)
            revoked, now = listed.serials, max(now, listed.issued)
        named = args.get("site")
        if not isinstance(named, str) or not 0 < len(named) <= 64:
            raise CommandError("bad-args", "provisioning names the site (--site, or the "
                               "approval's)")
        site = named
        # Offline, the approval itself comes with the right code (confirm), never before:
        # a device standing in for the kiosk must not get it. Here, the kiosk it names.
        offline = "kiosk" in args
        if offline:
            device_id = args["kiosk"]
            if not (isinstance(device_id, str) and len(device_id) == 8
                    and all(ch in "0123456789abcdef" for ch in device_id)):
                raise CommandError("bad-args", "kiosk is a kiosk id (8 hex digits)")
        else:
            device_id = sync_cert.device_id(prov.store.node)
        credential.check(tech, now=now, site=site, device_id=device_id, revoked=revoked,
                         action="provision")
        if len(commitment) != sas.COMMIT_BYTES:
            raise CommandError("bad-commit", f"a commitment is {sas.COMMIT_BYTES} bytes")
    except ProtocolError as exc:
        raise _refuse(prov, who, ctx.what, exc.code, str(exc)) from None
    except CommandError as exc:
        raise _refuse(prov, who, ctx.what, exc.code, str(exc)) from None
    detail = {"site": site, "kiosk": device_id}
    ctx.note(f"hold the kiosk's service button for {prov.hold:g} s, within "
             f"{prov.window:g} s")
    prov.show_code(None)
    held = pres.await_hold(prov.pressed, window=prov.window, hold=prov.hold, stop=prov.stop)
    if not held.ok:
        raise _refuse(prov, who, "provision.presence", held.result, held.describe(), detail)
    prov.record(who, "provision.presence", "ok", detail)
    prov.run = _Run(ctx.session_id, tech, hub, site, device_id, tool_ms, commitment,
                    secrets.token_bytes(sas.NONCE_BYTES), offline, now, revoked)
    return {"nonce": prov.run.nonce_r, "kiosk": device_id, "site": site}


# 2. reveal: the code on the kiosk's screen ----------------------------------------------

@command("provision-reveal", action=None)
def reveal(ctx: Context, args: dict[str, Any]) -> dict[str, Any]:
    prov = _provisioner(ctx)
    ctx.what = "provision.reveal"
    run = _session(ctx, prov)
    if run.code is not None:
        raise CommandError("already", "the code is shown already")
    try:
        nonce_i = _bytes(args, "nonce")
        sas.check_commit(run.commit, run.session, nonce_i)
        run.code = sas.code(run.session, nonce_i, run.nonce_r)
    except (ProtocolError, CommandError) as exc:
        prov.end()
        raise _refuse(prov, str(run.tech.serial), ctx.what, getattr(exc, "code", "bad-args"),
                      str(exc)) from None
    prov.show_code(run.code)
    # A run abandoned (the tool gone) takes its code off the screen in the end.
    timer = threading.Timer(prov.abandon, lambda: prov.end() if prov.run is run else None)
    timer.daemon = True
    timer.start()
    return {}


def _approval(prov: Provisioner, run: _Run, doc: bytes) -> sync_approval.Approval:
    """The approval the tool sends once the code matched: signed by the trusted hub key,
    for the site and kiosk the run began with, unexpired, and the credential still good
    at the time it shows (its issue is a lower bound)."""
    ap = sync_approval.read_approval(doc, run.hub_ed25519)
    if (ap.site, ap.device_id) != (run.site, run.device_id):
        raise CommandError("bad-approval", f"approval {ap.serial} is for kiosk {ap.device_id} "
                           f"at {ap.site!r}, not the {run.device_id} at {run.site!r} begun")
    now = max(run.now, ap.issued)
    if now > ap.expires:
        raise CommandError("expired", f"approval {ap.serial} expired")
    if prov.image_hub is not None and ap.hub_x25519 != prov.image_hub:
        raise CommandError("wrong-hub", "the approval is another hub's than the one this "
                           "kiosk's image names")
    credential.check(run.tech, now=now, site=run.site, device_id=run.device_id,
                     revoked=run.revoked, action="provision")
    return ap


# 3. confirm: the code typed, then the kiosk's keys and identity ------------------------

@command("provision-confirm", action=None)
def confirm(ctx: Context, args: dict[str, Any]) -> dict[str, Any]:
    prov = _provisioner(ctx)
    ctx.what = "provision.confirm"
    run = _session(ctx, prov)
    who = str(run.tech.serial)
    typed = args.get("code")
    if run.code is None or run.confirmed:
        raise CommandError("out-of-order", "provision-confirm comes once, after the reveal")
    if not isinstance(typed, str) or not sas.matches(run.code, typed):
        prov.end()
        raise _refuse(prov, who, ctx.what, "wrong-code", "the code does not match the "
                      "kiosk's: provisioning stopped (start again, with the button)")
    hub_urls, modems = _urls(args, "hub_urls"), _urls(args, "modem")
    prov.record(who, "provision.code", "ok", {"site": run.site})
    try:
        if run.offline:
            run.approval = _approval(prov, run, _bytes(args, "approval"))
            made = install_approval(prov.store, run.approval.raw, run.hub_ed25519,
                                    max(run.tool_ms, run.approval.issued))
            result: dict[str, Any] = {"kiosk": made.device_id, "letter": made.letter,
                                      "number": made.kiosk_number, "site": made.site}
        else:
            x_key, ed_key = ensure_keys(prov.data)
            request = sync_cert.make_request(prov.store.node, run.site, None, x_key, ed_key)
            result = {"request": request, "kiosk": run.device_id}
    except (StoreError, ProtocolError, CommandError) as exc:
        prov.end()
        code = getattr(exc, "code", "refused")
        raise _refuse(prov, who, ctx.what, str(code), str(exc)) from None
    if run.approval is not None:  # online, with the certificate: until then nothing changes
        _configure(ctx, prov, hub_urls, modems)
        result["clock"] = _set_clock(prov, run.tool_ms)
        prov.record(who, "provision.approval", "ok",
                    {"approval": run.approval.serial, "kiosk": run.device_id})
        prov.end()
    else:
        run.confirmed, run.hub_urls, run.modems = True, hub_urls, modems
        prov.record(who, "provision.request", "ok", {"kiosk": run.device_id})
    return result


# 4. install: the hub's certificate (online) ---------------------------------------------

@command("provision-install", action=None)
def install_cert(ctx: Context, args: dict[str, Any]) -> dict[str, Any]:
    prov = _provisioner(ctx)
    ctx.what = "provision.install"
    run = _session(ctx, prov)
    who = str(run.tech.serial)
    if not run.confirmed:
        raise CommandError("out-of-order", "provision-install comes after the code")
    doc = _bytes(args, "cert")
    try:
        cert = sync_cert.read_certificate(doc, run.hub_ed25519)  # the hub the kiosk trusts
        if cert.hub_ed25519 != run.hub_ed25519 or cert.site != run.site:
            raise StoreError("the certificate names another hub or site", "wrong-certificate")
        if prov.image_hub is not None and cert.hub_x25519 != prov.image_hub:
            raise StoreError("the certificate is another hub's than the one this kiosk's "
                             "image names", "wrong-hub")
        install(prov.store, doc)
    except (StoreError, ProtocolError) as exc:
        raise _refuse(prov, who, ctx.what, str(getattr(exc, "code", "refused")),
                      str(exc)) from None
    _configure(ctx, prov, run.hub_urls, run.modems)
    clock = _set_clock(prov, run.tool_ms)
    prov.record(who, "provision.install", "ok", {"kiosk": cert.device_id,
                                                  "certificate": cert.serial})
    prov.end()
    return {"kiosk": cert.device_id, "letter": cert.letter, "number": cert.kiosk_number,
            "site": cert.site, "certificate": cert.serial, "clock": clock}


# configuration and clock ----------------------------------------------------------------

def _configure(ctx: Context, prov: Provisioner, hub_urls: list[str],
               modems: list[str]) -> None:
    """The hub URLs and modem-driven links into the kiosk's configuration file; the
    runtime restarts gracefully once the tool has the reply, to sync with them."""
    if prov.config_file is None or not (hub_urls or modems):
        return
    from device.tech.commands import with_key, write_atomically

    path = prov.config_file
    text = path.read_text("utf-8") if path.exists() else ""
    hubs = hub_urls + [m for m in modems if m not in hub_urls]
    if hubs:
        text = with_key(text, "hub", hubs)
    if modems:
        text = with_key(text, "link_carrier", modems)
    try:
        write_atomically(path, text)
    except (OSError, ValueError) as exc:
        raise CommandError("write-failed", f"configuration not written: {exc}") from None
    ctx.after_reply.append(ctx.env.console.restart)


def _set_clock(prov: Provisioner, tool_ms: int) -> str:
    """The clock from the tool when the kiosk has no better source (no hub time)."""
    if TrustedClock(prov.data).now() is not None:
        return "kept: the kiosk has the hub's time"
    if prov.set_wall is None:
        return "kept: the clock cannot be set"
    try:
        prov.set_wall(tool_ms / 1000.0)
    except OSError as exc:
        return f"kept: {exc.strerror or exc}"
    return "set from the tool"
