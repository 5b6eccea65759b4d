"""A vaccine fridge's temperature node: a MicroPython application.

Theory of operation
-------------------
A small board (RP2040 class) next to the fridge reads a DS18B20 every minute,
keeps the readings in a bounded ring in flash, and sends them to its kiosk
over a serial line in a Haven session (protocol/sensor.py is the contract).
Everything but the I/O is sans-I/O and driven by ``now`` (seconds on a
monotonic clock), so the same code runs on a board, under the unix port in
real time, and under the unix port stepped on a simulated clock:

* ``sensors``: the DS18B20's scratchpad decoded into hundredths of °C or a
  fault code; the hardware driver and a scripted simulated sensor.
* ``monitor``: excursions outside the fridge's range and sensor faults that
  last too long become alarms (raised, then cleared).
* ``ring``: readings and alarms in RAM, committed to two alternating files
  with CRCs so a torn write loses nothing committed.
* ``link``: the session to the kiosk: hello, welcome, readings and alarms
  sent until acknowledged, reconnection with backoff.
* ``node``: the above on one clock; ``console``: a technician's commands;
  ``settings``: keys and configuration in files.
* ``stepper`` (simulated time over stdin/stdout), ``unix`` (the unix port's
  command line), ``main`` (a board's entry).

It imports only ``protocol`` and its own modules, never the kiosk's runtime.

Running it under the unix port (from the repository's root; ``--data`` is
where its files go, as a board's flash)::

    export MICROPYPATH=protocol/portable/stdlib:.
    M=".venv/bin/micropython -m device.fridge_node.unix --data /var/lib/fridge"
    $M console keygen                  # the node's key; give the public key to the kiosk
    $M console kiosk <kiosk's public key, 64 hex digits>
    $M console set alarm_after 1800    # see `$M console help`
    $M --serial /dev/ttyUSB0 --profile "steady:4.5,high:12.0:45"

On a board: ``tools/build_node_mpy.py`` writes ``main.py`` and ``lib/``.
"""
