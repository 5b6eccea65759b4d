"""``bundle``: the technician's command that makes a debug bundle and sends it.

The tool names a nonce (its request's, so an old bundle cannot answer a new pull)
and, with ``seal_to``, an X25519 public key (32 bytes, or ``"hub"``: the hub's key
in the kiosk's certificate) the bundle is sealed to. The kiosk builds it into an
unnamed temporary file beside its export directory (gone when the transfer ends)
and sends it as a transfer, as ``pull`` does. It needs the certificate's ``read``
action; the audit entry says whether it was sealed and how large it was.
"""

from __future__ import annotations

import os
import re
import tempfile
import time
from dataclasses import replace
from typing import Any

from device.bundle.build import Sources, build
from device.tech.commands import status
from device.tech.service import CommandError, Context, Outgoing, command, pieces_of, read_at
from device.tech.trusted_time import SIGNED, SYNC
from protocol.manifest import build_manifest

NONCE = re.compile(r"[0-9a-f]{32}")


def sources(ctx: Context) -> Sources:
    """The kiosk's ``Sources`` (``TechEnv.extra["bundle"]``) with what the session knows:
    the status command's view, the clocks, the boots trusted time saw, the version."""
    src = ctx.env.extra.get("bundle")
    if not isinstance(src, Sources):
        raise CommandError("no-bundle", "this kiosk cannot make debug bundles (no data "
                           "directory given to its console)")
    techs = ctx.technicians

    def hub_time() -> tuple[int, bool, str] | None:
        now = techs.clock.now() if techs is not None else None
        return None if now is None else (now.ms, now.exact, now.source)

    def boot_ids() -> list[str]:
        anchors = [techs.clock.anchor(s) for s in (SYNC, SIGNED)] if techs else []
        return sorted({a.boot.id for a in anchors if a is not None and a.boot.id})

    return replace(src, status=lambda: status(ctx, {}), hub_time=hub_time, boot_ids=boot_ids,
                   wall_ms=lambda: int(ctx.env.console.wall() * 1000),
                   version=ctx.env.console.version, config_file=ctx.env.config_file)


@command("bundle", action="read")
def bundle(ctx: Context, args: dict[str, Any]) -> Outgoing:
    nonce, seal = args.get("nonce"), args.get("seal_to")
    if not isinstance(nonce, str) or not NONCE.fullmatch(nonce):
        raise CommandError("bad-args", "bundle takes the request's nonce (32 hex digits)")
    src = sources(ctx)
    if seal == "hub":
        from device.enrol import load

        seal = load(src.data).cert.hub_x25519
    if seal is not None and (not isinstance(seal, bytes) or len(seal) != 32):
        raise CommandError("bad-args", "seal_to is an X25519 public key (32 bytes) or 'hub'")
    ctx.detail["sealed"] = seal is not None
    # Closed by the Outgoing when the transfer ends, so no context manager here.
    f = tempfile.TemporaryFile(dir=ctx.env.console.export_dir.parent)  # noqa: SIM115
    try:
        manifest = build(f, src, nonce=nonce, seal_to=seal)
        size = f.seek(0, os.SEEK_END)
        fd = f.fileno()

        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(manifest["made_ms"] / 1000))
        name = f"bundle-{manifest['kiosk']}-{stamp}.{'sealed' if seal else 'zip'}"
        out = build_manifest(pieces_of(fd), name)
    except BaseException:
        f.close()
        raise
    ctx.detail["size"] = size
    return Outgoing(out, read_at(fd), {"name": name, "size": size, "sealed": seal is not None,
                                       "sha256": out.object_hash.hex(),
                                       "kiosk": manifest["kiosk"]},
                    close=f.close)
