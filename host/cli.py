"""``haven``: the hub and the technician's tool."""

from __future__ import annotations

import argparse
import sys

from protocol import WIRE_VERSION, __version__


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="haven",
        description="Haven Kiosk hub and technician tool.",
    )
    parser.add_argument(
        "--version",
        action="version",
        version=f"haven {__version__} (wire protocol {WIRE_VERSION})",
    )
    parser.add_subparsers(dest="command", metavar="COMMAND")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
