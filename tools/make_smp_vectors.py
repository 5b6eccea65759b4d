"""Write protocol/vectors/smp.json from the `smp` package, the SMP peer we hold our
console codec to (python tools/make_smp_vectors.py; needs the dev extras).

Each vector is what smp (the codec smpclient and smpmgr use) makes of its input:
console lines of a packet at several line lengths, headers, request and response
packets. tests/test_smp_codec.py checks protocol/smp against the file, and the file
against smp itself, so neither drifts.
"""

from __future__ import annotations

import json
from pathlib import Path

from smp import header as smph
from smp import os_management as smpos
from smp import packet as smppacket
from smp.file_management import FileDownloadRequest, FileDownloadResponse, FileUploadRequest

OUT = Path(__file__).resolve().parent.parent / "protocol" / "vectors" / "smp.json"


def main() -> None:
    packets = [
        smpos.EchoWriteRequest(d="hello", sequence=1).BYTES,
        smpos.MCUMgrParametersReadRequest(sequence=2).BYTES,
        FileDownloadRequest(off=0, name="bundle.cbor", sequence=3).BYTES,
        FileUploadRequest(off=0, data=bytes(range(256)) * 2, name="config.toml", len=512,
                          sequence=4).BYTES,
    ]
    console = [{"packet": p.hex(), "line_length": n,
                "lines": b"".join(smppacket.encode(p, line_length=n)).hex()}
               for p in packets for n in (128, 32, 8192)]
    headers = []
    for p in packets:
        h = smph.Header.loads(p[:8])
        headers.append({"hex": p[:8].hex(), "op": int(h.op), "version": int(h.version),
                        "flags": int(h.flags), "length": h.length, "group": int(h.group_id),
                        "seq": h.sequence, "command": int(h.command_id)})
    responses = {
        "echo": smpos.EchoWriteResponse(r="hello", sequence=1).BYTES.hex(),
        "params": smpos.MCUMgrParametersReadResponse(buf_size=4096, buf_count=1,
                                                     sequence=2).BYTES.hex(),
        "download": FileDownloadResponse(off=0, data=b"abc", len=3, sequence=3).BYTES.hex(),
    }
    crc = [{"data": d.hex(), "crc": smppacket.crc16_func(d)}
           for d in (b"123456789", b"", bytes(8), bytes(range(256)))]
    OUT.write_text(json.dumps({
        "about": "SMP over the console: made by tools/make_smp_vectors.py from the smp "
                 "package; see SPEC.md, Console",
        "crc16_xmodem": crc, "console": console, "headers": headers,
        "responses": responses}, indent=1) + "\n")


if __name__ == "__main__":
    main()
