"""SMP (MCUmgr's Simple Management Protocol) on the kiosk's console: pure codec, no I/O.

``header``: the 8-byte SMP header. ``console``: Zephyr's "SMP over console" line
framing (base64 lines, a length, a CRC-16/XMODEM). ``demux``: one byte stream told
apart into SMP packets, Haven's COBS frames and text. See SPEC.md, "Console".
"""
