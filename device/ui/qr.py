"""The QR code of a short patient code, drawn by the kiosk itself as inline SVG.

segno (pure Python, the whole of ISO/IEC 18004) makes the symbol; the page
puts the SVG in place, so nothing is fetched: no network, no script from
elsewhere, and the code never travels in a URL that a log or the browser's
history would keep. The QR holds the code as printed, dash included
(``XXXX-XXXX``, QR's alphanumeric mode: version 1), so a scanner at the
start screen types it as a code, never as a passport number (SPEC.md "Short
patient codes"). segno is imported on first use: a kiosk starts without it.
"""

from __future__ import annotations

from protocol.crdt import short_code


def code_svg(code: str) -> str:
    """The inline ``<svg>`` of ``code``'s QR (4 modules of quiet zone, as ISO/IEC 18004
    asks); its size is the page's to set."""
    import segno

    qr = segno.make(short_code.display(code), error="m", micro=False)
    return str(qr.svg_inline(scale=1, border=4, omitsize=True, svgclass="qr",
                             lineclass=None))
