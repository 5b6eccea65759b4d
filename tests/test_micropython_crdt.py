"""The replica (protocol.crdt: records, writes, conflicts, canonical JSON) under the real
MicroPython interpreter: the same merges, conflicts and bytes as under CPython; and the
sorted JSON writer MicroPython uses for it, held to CPython's json.dumps."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocol.portable import sorted_json
from tests import micropython_port


def test_replicas_merge_alike_under_both_interpreters() -> None:
    script = micropython_port.SCRIPTS / "crdt_replica.py"
    on_cpython = micropython_port.run_cpython(script)
    assert on_cpython.returncode == 0, on_cpython.stderr
    on_micropython = micropython_port.run(script)
    assert on_micropython.returncode == 0, on_micropython.stdout + on_micropython.stderr
    assert on_micropython.stdout == on_cpython.stdout
    lines = on_cpython.stdout.splitlines()
    assert lines[0] == "True"  # three replicas, three orders, one state
    assert "refused held" in lines and "True False" in lines
    assert '"name":"Zo\\u00eb Ndiaye \\ud83d\\ude00"' in lines[1]


values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text()
    | st.floats(allow_nan=False, allow_infinity=False),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=5), inner,
                                                                max_size=4),
    max_leaves=12)


@settings(max_examples=25, deadline=None)
@given(values)
def test_sorted_json_is_cpythons(value: object) -> None:
    assert sorted_json.dumps(value) == json.dumps(value, sort_keys=True, separators=(",", ":"),
                                                  ensure_ascii=True)


def test_sorted_json_floats_and_refusals() -> None:
    for x in (0.0, -0.0, -1.5, 7.25, 98.6, 1e22, 1e16, 9999999999999998.0, 1e-4, 9.999e-5,
              1e-7, 5e-324, 1.7976931348623157e308, 1 / 3):
        assert sorted_json.dumps([x]) == json.dumps([x], separators=(",", ":"))
    assert sorted_json.dumps(float("nan")) == "NaN"
    with pytest.raises(ValueError):
        sorted_json.dumps([float("inf")], allow_nan=False)
