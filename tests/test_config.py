"""The kiosk's configuration: one declaration, read from TOML and from flags.

Every option is declared once, in ``device.config.KioskConfig``; these tests
hold the TOML reader, the ``haven-kiosk run`` flags, the example file and the
README's table to it, and feed the reader a technician's mistakes.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from device import config
from device.cli import build_parser, main

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "deploy" / "kiosk.toml.example"
BOUND = 60


def subcommand(name: str) -> object:
    parser = build_parser()
    (sub,) = [a for a in parser._actions if a.dest == "command"]
    return sub.choices[name]  # type: ignore[attr-defined]


def test_flags_override_the_file_which_overrides_the_defaults(tmp_path: Path) -> None:
    f = tmp_path / "kiosk.toml"
    f.write_text('data = "/srv/k"\nhub = ["tcp://a:1", "/dev/ttyUSB0"]\ninterval = 30\n'
                 'link_carrier = ["/dev/ttyUSB0"]\nbaud = 9600\n')
    args = build_parser().parse_args(["run", "--config", str(f), "--interval", "5",
                                      "--hub", "tcp://b:2", "--hub", "/dev/ttyUSB0"])
    cfg = config.load(args.config, config.flags_of(args))
    assert cfg.interval == 5.0  # the flag
    assert cfg.hub == ["tcp://b:2", "/dev/ttyUSB0"]  # a list flag replaces the file's list
    assert (cfg.baud, cfg.link_carrier) == (9600, ["/dev/ttyUSB0"])  # the file
    assert cfg.data == Path("/srv/k") and isinstance(cfg.data, Path)
    assert cfg.retry_max == config.KioskConfig().retry_max == 60.0  # the default
    args = build_parser().parse_args(["run", "--config", str(f)])
    assert config.load(args.config, config.flags_of(args)).interval == 30.0


def test_a_kiosk_table_is_read_like_the_top_level(tmp_path: Path) -> None:
    f = tmp_path / "kiosk.toml"
    f.write_text('[kiosk]\ndata = "/srv/k"\nidle_seconds = 5\n')
    assert config.load(f, {}).idle_seconds == 5.0


def test_every_option_is_a_run_flag_with_its_declared_help() -> None:
    run = subcommand("run")
    flags = {a.dest: a for a in run._actions  # type: ignore[attr-defined]
             if a.option_strings and a.dest not in ("help", "config")}
    assert set(flags) == set(config.OPTIONS), "run's flags are the declared options, no more"
    for name, spec in config.OPTIONS.items():
        action = flags[name]
        assert action.option_strings == ["--" + name.replace("_", "-")]
        assert action.help == spec.help_text() and action.default is None


def test_sync_flags_come_from_the_same_declaration() -> None:
    sync = subcommand("sync")
    actions = {a.dest: a for a in sync._actions}  # type: ignore[attr-defined]
    for name in ("hub", "baud", "interval", "link_interval"):
        assert actions[name].help == config.OPTIONS[name].help_text()
    args = build_parser().parse_args(["sync", "--data", "d", "--hub", "tcp://a:1"])
    assert (args.interval, args.link_interval, args.baud) == (10.0, 1.0, None)


def test_example_file_sets_or_shows_every_option_and_loads() -> None:
    text = EXAMPLE.read_text()
    for name in config.OPTIONS:
        assert re.search(rf"^#? ?{name} = ", text, re.M), f"{name} is not in {EXAMPLE.name}"
    cfg = config.load(EXAMPLE, {})
    assert cfg.hub and cfg.data == Path("/var/lib/haven")


def test_example_with_every_key_set_loads(tmp_path: Path) -> None:
    """The commented-out keys' examples are valid values too."""
    text = EXAMPLE.read_text()
    f = tmp_path / "all.toml"
    f.write_text(re.sub(r"^# ?(\w+ = )", r"\1", text, flags=re.M))
    loaded = config.read_file(f)
    assert set(loaded) == set(config.OPTIONS)
    config.load(f, {})


def test_readme_table_is_the_declaration() -> None:
    readme = (ROOT / "README.md").read_text()
    assert config.markdown_table() in readme, (
        "README.md's table of options differs from device/config.py; paste in the output "
        "of: python -c 'from device.config import markdown_table; print(markdown_table())'")


def test_flags_and_file_agree_on_defaults_and_ranges(tmp_path: Path) -> None:
    defaults = config.KioskConfig()
    for name, spec in config.OPTIONS.items():
        assert getattr(defaults, name) == spec.default
        if not (spec.option.positive or spec.option.zero):
            continue
        bad = -1
        f = tmp_path / f"{name}.toml"
        f.write_text(f'data = "/srv/k"\n{name} = {int(bad)}\n')
        with pytest.raises(config.ConfigError, match=rf"line 2: {name} must be"):
            config.load(f, {})
        with pytest.raises(config.ConfigError, match=rf"^{spec.flag} must be"):
            config.load(None, {"data": "/srv/k", name: bad})


BAD_FILES = [
    # (file text, what the one line must say)
    ("data = [\n", "not TOML"),
    ('data = "/srv/k"\n\x00\n', "not TOML"),
    ('data = "/srv/k"\nintervall = 5\n',
     "line 2: unknown key 'intervall' (did you mean 'interval'?)"),
    ('data = "/srv/k"\nconsole = "/dev/ttyGS0"\nconsole_import = "../etc"\n',
     "line 3: console_import must be a folder inside the data directory"),
    ('data = "/srv/k"\ninterval = "soon"\n',
     "line 2: interval has the wrong type: expected a number, not str 'soon'"),
    ('data = "/srv/k"\ninterval = true\n', "interval has the wrong type"),
    ('data = "/srv/k"\nbaud = 9600.5\n', "baud has the wrong type: expected a whole number"),
    ('data = "/srv/k"\nhub = "tcp://a:1"\n', "hub has the wrong type: expected a list"),
    ('data = "/srv/k"\nhub = [1]\n', "hub must be a list of URLs"),
    ('data = "/srv/k"\ninterval = -10\n', "line 2: interval must be positive, not -10"),
    ('data = "/srv/k"\ninterval = 0\n', "interval must be positive, not 0"),
    ('data = "/srv/k"\ninterval = nan\n', "interval must be a finite number"),
    ('data = "/srv/k"\nretry_max = inf\n', "retry_max must be a finite number"),
    ('data = "/srv/k"\nlink_interval = -1\n', "link_interval must be 0 (off) or more, not -1"),
    ('data = "/srv/k"\nbaud = 0\n', "baud must be positive"),
    ('data = "/srv/k"\nui = "nohost"\n', "ui must be HOST:PORT, not 'nohost'"),
    ('data = "/srv/k"\nui = "h:99999"\n', "ui must be HOST:PORT"),
    ('data = "/srv/k"\nhub = ["a"]\nlink_carrier = ["b"]\n', "'b' is not one of the hub URLs"),
    ('kiosk = 3\n', "[kiosk] must be a table"),
    ('data = "/x"\n[kiosk]\ninterval = 3\n', "keys outside the [kiosk] table: data"),
    ("interval = 3\n", "no data directory"),
]


@pytest.mark.parametrize(("text", "message"), BAD_FILES)
def test_bad_file_is_one_clear_line_and_status_2(tmp_path: Path, text: str, message: str,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    f = tmp_path / "kiosk.toml"
    f.write_text(text)
    assert main(["run", "--config", str(f)]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.count("\n") == 1 and err.startswith("haven-kiosk run: ")
    assert message in err, err


def test_unreadable_files_are_one_clear_line(tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    binary = tmp_path / "binary.toml"
    binary.write_bytes(b"\xff\xfe\x00garbage")
    for path, message in ((tmp_path / "none.toml", "cannot read"), (tmp_path, "cannot read"),
                          (binary, "not UTF-8")):
        assert main(["run", "--config", str(path)]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and message in err, err


@pytest.mark.parametrize(("flags", "message"), [
    (["--interval", "-1"], "argument --interval: must be positive, not -1"),
    (["--interval", "soon"], "argument --interval: expected a number, not 'soon'"),
    (["--link-interval", "-0.5"], "argument --link-interval: must be 0 (off) or more"),
    (["--baud", "96.5"], "argument --baud: expected a whole number, not '96.5'"),
    (["--ui", "nohost"], "argument --ui: must be HOST:PORT"),
    (["--console-export", "/etc"], "argument --console-export: must be a folder inside"),
])
def test_bad_flags_are_one_clear_line_and_status_2(
        flags: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["run", "--data", "/srv/k", *flags])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err, err


def test_sync_refuses_a_negative_interval_before_touching_anything(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for flags in (["--interval", "-5"], ["--timeout", "0"], ["--link-interval", "nan"]):
        with pytest.raises(SystemExit) as exit_:
            main(["sync", "--data", str(tmp_path / "k"), "--hub", "tcp://127.0.0.1:9", *flags])
        assert exit_.value.code == 2
        assert capsys.readouterr().err.count("\n") == 1
    assert not (tmp_path / "k").exists()


def test_entry_point_bad_config_exits_2_without_a_traceback(tmp_path: Path) -> None:
    f = tmp_path / "kiosk.toml"
    f.write_text('data = "/srv/k"\nidle_seconds = -60\n')
    r = subprocess.run([sys.executable, "-m", "device.cli", "run", "--config", str(f)],
                       capture_output=True, text=True, timeout=BOUND, cwd=ROOT)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr == f"haven-kiosk run: {f}, line 2: idle_seconds must be positive, not -60\n"
