"""The protocol's driver: the I/O that the kiosk and the hub share.

Everything else in ``protocol/`` is the pure core: it takes bytes and the
time as arguments and opens nothing. This subpackage is the one place in
``protocol/`` that touches the world, written once for both sides (as
httpcore is to h11):

* ``link``: one ``Link`` interface over TCP and every pyserial URL;
* ``session_driver``: runs a ``protocol.session.core.Session`` over a link;
* ``secret_files``: owner-only key files;
* ``wall_clock``: the wall clock in milliseconds.
* ``command_line``: the shell both command lines (``haven``, ``haven-kiosk``) share.
* ``accept``: an accept loop that backs off when descriptors run out.
* ``tpm``, ``tpm_key``: a TPM 2.0 through Debian's tpm2-tools, and a key sealed to it.

The core never imports this package (``tests/test_import_rules.py``); a port
to another runtime (MicroPython) takes the core and writes its own driver.
"""
