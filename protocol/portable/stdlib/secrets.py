"""secrets.token_bytes for MicroPython: os.urandom (getrandom(2) on the unix port,
the hardware generator on an RP2040)."""

import os


def token_bytes(n=32):
    return os.urandom(n)
