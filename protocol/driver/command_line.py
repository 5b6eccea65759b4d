"""What the two command lines share: ``haven`` (the hub) and ``haven-kiosk``.

Each builds its commands on ``command_parser`` (a ``--version`` line that names
the wire protocol, and one subcommand per job) and ends in ``run_command``: it
runs the chosen command, and prints a library error as one line on stderr,
``PROG COMMAND: message``, with the exit status the CLI's ``failure`` chooses;
an ``OSError`` the CLI left alone (a folder that cannot be made) is one line
and status 1 too.
An interrupt is one line and status 130; a reader that went away (``| head``)
ends quietly with status 0.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import NoReturn

from protocol import WIRE_VERSION, __version__


class TerseParser(argparse.ArgumentParser):
    """A usage error is one line on stderr (and exit status 2), not the whole usage."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: {message} (see {self.prog} --help)\n")


def positive_number(text: str) -> float:
    """An argparse ``type`` for a finite number above 0 (seconds, say)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, not {text!r}") from None
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be positive, not {text}")
    return value


def command_parser(prog: str, description: str,
                   parser_class: type[argparse.ArgumentParser] = argparse.ArgumentParser,
                   ) -> tuple[argparse.ArgumentParser,
                              argparse._SubParsersAction[argparse.ArgumentParser]]:
    """A parser with ``--version``, and the action its subcommands are added to."""
    parser = parser_class(prog=prog, description=description)
    parser.add_argument("--version", action="version",
                        version=f"{prog} {__version__} (wire protocol {WIRE_VERSION})")
    return parser, parser.add_subparsers(dest="command", metavar="COMMAND")


def run_command(parser: argparse.ArgumentParser, argv: list[str] | None,
                commands: Callable[[argparse.Namespace], int],
                failure: Callable[[Exception], tuple[str, int] | None]) -> int:
    """Parse ``argv``, run its command, and return the exit status.

    ``failure`` turns an error the user should read into its message and exit
    status; ``None`` lets the error out (a bug shows its traceback).
    """
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    try:
        return commands(args)
    except KeyboardInterrupt:
        print(f"{parser.prog} {args.command}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # e.g. piped into head
        sys.stderr.close()
        return 0
    except Exception as exc:
        told = failure(exc)
        if told is None and isinstance(exc, OSError) and exc.strerror:
            # the machine said no (a folder that cannot be made, a port in use): not a bug
            where = f" ({exc.filename})" if exc.filename else ""
            told = f"{exc.strerror}{where}", 1
        if told is None:
            raise
        print(f"{parser.prog} {args.command}: {told[0]}", file=sys.stderr)
        return told[1]
