"""The kiosk's side of its sensor nodes: vaccine fridges' temperature nodes on serial
lines (SPEC.md "Sensor nodes").

``records``: enrolments and what each node sent, in the kiosk's store;
``link``: one line's sessions, sans-I/O; ``port``: the serial driver and the
runtime's service; ``command``: ``haven-kiosk fridge``.
"""
