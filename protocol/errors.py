"""The protocol's exceptions, under one root.

``LocalProtocolError`` means the caller misused the API; ``RemoteProtocolError``
means the peer (or the line) sent something we refuse. Both are
``ProtocolError`` and ``ValueError``, so callers can catch either.
"""


class ProtocolError(ValueError):
    """Root of every error raised by ``protocol``."""

    #: A short, stable reason code (used in close messages and counters).
    code = "protocol-error"

    def __init__(self, message: str, code: str | None = None) -> None:
        super().__init__(message)
        if code is not None:
            self.code = code


class LocalProtocolError(ProtocolError):
    """We were asked to do something the protocol does not allow."""

    code = "local-error"


class RemoteProtocolError(ProtocolError):
    """The peer sent bytes or a message we refuse."""

    code = "remote-error"
