"""Haven Kiosk wire protocol and algorithms.

Pure Python, sans-I/O: nothing in this package's core opens a socket, a
file or a serial port, reads a clock or starts a thread. Callers pass bytes
and the current time in, and get events and bytes out. See SPEC.md. The one
exception is ``protocol.driver``, the I/O that the kiosk and the hub share
(links, the session driver, key files, the clock); the core never imports it.
"""

import sys

WIRE_VERSION = 2
#: Under MicroPython (a sensor node), protocol.portable stands in for cryptography
#: and cbor2; see protocol/portable/.
MICROPYTHON = sys.implementation.name == "micropython"
__version__ = "0.1.0"
