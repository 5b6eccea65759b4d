"""Imports the modules named on the command line and prints every module then loaded.

One line a loaded module (``name file``), then one ``failed name: error`` line
a module that would not import. tests/test_micropython_port.py runs it.
"""

import sys

failed = []
for name in sys.argv[1:]:
    try:
        __import__(name)
    except Exception as exc:  # noqa: BLE001  (each failure is reported, not raised)
        failed.append(name + ": " + repr(exc))
for name in sorted(sys.modules):
    print(name, getattr(sys.modules[name], "__file__", "-"))
for line in failed:
    print("failed", line)
