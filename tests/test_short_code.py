"""Short patient codes: protocol/vectors/short_code.json, and what the check character
catches, tried on every code of a sample."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from protocol.crdt import short_code
from protocol.crdt.ids import code_patient_id, patient_id
from protocol.crdt.short_code import ALPHABET, ShortCodeError

VECTORS = json.loads((Path(__file__).parent.parent / "protocol/vectors/short_code.json")
                     .read_text("utf-8"))
KEY = bytes.fromhex(VECTORS["fleet_key"])


def sample(n: int = 300) -> list[str]:
    rng = random.Random(12)
    return [short_code.encode(rng.randrange(short_code.MAX_KIOSK + 1),
                              rng.randrange(1, short_code.MAX_COUNTER + 1)) for _ in range(n)]


def refused(text: str) -> str:
    with pytest.raises(ShortCodeError) as err:
        short_code.parse(text)
    return err.value.code


def test_the_codes_and_their_patient_ids_are_the_vectors() -> None:
    for v in VECTORS["codes"]:
        assert short_code.encode(v["kiosk"], v["counter"]) == v["code"]
        assert short_code.display(v["code"]) == v["display"]
        assert short_code.split(v["display"]) == (v["kiosk"], v["counter"])
        assert str(code_patient_id(KEY, v["display"])) == v["patient_id"]
        assert short_code.is_code(v["display"]) and not short_code.is_code(v["code"])


def test_what_a_patient_types_or_reads_aloud_is_the_code() -> None:
    for v in VECTORS["parse"]:
        assert short_code.parse(v["text"]) == v["code"], v


def test_bad_codes_are_refused_with_their_reason() -> None:
    for v in VECTORS["bad"]:
        assert refused(v["text"]) == v["code"], v
    for v in VECTORS["range"]:
        with pytest.raises(ShortCodeError) as err:
            short_code.encode(v["kiosk"], v["counter"])
        assert err.value.code == "code-range"  # a full counter never wraps


def test_a_code_has_its_dash_and_a_passport_number_never_does() -> None:
    for v in VECTORS["shape"]:
        assert short_code.is_code(v["text"]) is v["is_code"], v


def test_every_change_of_one_character_is_caught() -> None:
    for code in sample(100):  # every position, every other character: 24,800 codes
        for i in range(short_code.LENGTH):
            for c in ALPHABET:
                if c != code[i]:
                    assert refused(code[:i] + c + code[i + 1:]) == "code-check"


def test_every_swap_of_neighbours_is_caught_but_0_and_z() -> None:
    """Luhn mod N's one blind spot: the values 0 and N - 1 side by side (SPEC.md)."""
    missed = set()
    for code in sample() + [short_code.encode(0, 31 * 32 + 0)]:
        for i in range(short_code.LENGTH - 1):
            a, b = code[i], code[i + 1]
            if a == b:
                continue
            swapped = code[:i] + b + a + code[i + 2:]
            try:
                short_code.parse(swapped)
            except ShortCodeError:
                continue
            missed.add(frozenset((a, b)))
    assert missed == {frozenset("0Z")}


def test_code_ids_are_a_fleet_keys_and_never_a_passports() -> None:
    code = VECTORS["codes"][1]["code"]
    assert code_patient_id(KEY, code.lower()) == code_patient_id(KEY, code)
    assert code_patient_id(bytes(32), code) != code_patient_id(KEY, code)
    assert code_patient_id(KEY, code) not in {patient_id(KEY, p) for p in (
        code, short_code.display(code), f"CODE:{code}", f"code:{code}")}
    with pytest.raises(ShortCodeError):
        code_patient_id(KEY, code[:7] + ("0" if code[7] != "0" else "1"))
