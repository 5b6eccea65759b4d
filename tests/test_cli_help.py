"""Every command and subcommand of ``haven`` and ``haven-kiosk`` has help.

Like sqlite-utils' tests/test_docs.py: the parsers are walked, not listed by
hand, so a command added without help fails here. Each command needs a line
in its parent's list, a description on its own page, help for every argument,
and ``--help`` that exits 0.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Iterator

import pytest

from device.cli import build_parser as kiosk_parser
from host.cli import build_parser as hub_parser

PARSERS: dict[str, Callable[[], argparse.ArgumentParser]] = {
    "haven-kiosk": kiosk_parser, "haven": hub_parser}


def commands(parser: argparse.ArgumentParser, path: tuple[str, ...]
             ) -> Iterator[tuple[tuple[str, ...], argparse.ArgumentParser, str | None]]:
    """(path, parser, the help its parent lists) for every command under ``parser``."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            listed = {a.dest: a.help for a in action._choices_actions}
            for name, sub in action.choices.items():
                yield (*path, name), sub, listed.get(name)
                yield from commands(sub, (*path, name))


def every_command() -> list[tuple[str, tuple[str, ...]]]:
    return [(prog, path) for prog, build in PARSERS.items()
            for path, _, _ in commands(build(), ())]


def find(prog: str, path: tuple[str, ...]) -> tuple[argparse.ArgumentParser, str | None]:
    for p, parser, listed in commands(PARSERS[prog](), ()):
        if p == path:
            return parser, listed
    raise LookupError(path)


def test_the_walk_finds_the_commands() -> None:
    found = {f"{prog} {' '.join(path)}" for prog, path in every_command()}
    assert {"haven-kiosk run", "haven-kiosk hw press", "haven hub serve",
            "haven review resolve", "haven keygen"} <= found
    assert len(found) >= 25


@pytest.mark.parametrize(("prog", "path"), every_command(),
                         ids=lambda v: " ".join(v) if isinstance(v, tuple) else v)
def test_command_has_help(prog: str, path: tuple[str, ...],
                          capsys: pytest.CaptureFixture[str]) -> None:
    parser, listed = find(prog, path)
    assert listed, f"{prog} {' '.join(path)} has no line in its parent's list of commands"
    assert parser.description, f"{prog} {' '.join(path)} has no description"
    for action in parser._actions:
        if action.dest == "help" or isinstance(action, argparse._SubParsersAction):
            continue
        name = "/".join(action.option_strings) or action.dest
        assert action.help, f"{prog} {' '.join(path)}: {name} has no help"
    with pytest.raises(SystemExit) as exit_:
        PARSERS[prog]().parse_args([*path, "--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: {prog} {' '.join(path)}") and parser.description[:30] in \
        " ".join(out.split())


@pytest.mark.parametrize("prog", PARSERS)
def test_top_level_help_lists_every_command(prog: str,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        PARSERS[prog]().parse_args(["--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    for path in {p[0] for pr, p in every_command() if pr == prog}:
        assert f"    {path} " in out, path
