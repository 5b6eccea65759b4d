"""Errors of ``haven send`` / ``haven receive``, each with its exit code.

One root, ``HavenError``; the CLI prints the message and exits with
``exit_code``. Leaves also inherit the matching built-in where there is one.
"""

from __future__ import annotations


class HavenError(Exception):
    """Something the user should read. ``exit_code`` is the process's."""

    exit_code = 1


class UsageError(HavenError, ValueError):
    """Bad arguments: a missing file, an unreadable key, a port that won't open."""

    exit_code = 2


class TransferFailed(HavenError):
    """The transfer ended without the file (the protocol's ``TransferAborted`` event, from
    either side)."""

    exit_code = 1


class PeerSilent(HavenError, TimeoutError):
    """No authenticated frame from the peer for ``--timeout`` seconds."""

    exit_code = 3


class PeerRefused(HavenError, PermissionError):
    """The peer's key is not the one we were told to expect, or it refused us."""

    exit_code = 4
