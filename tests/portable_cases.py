"""How many random inputs the portable primitives' cross-checks take.

A handful in the default run, thousands with ``./tools/test --long`` (the
``long`` marker): ``@pytest.mark.parametrize("cases", CASES)``.
"""

import pytest

CASES = [
    pytest.param(20, id="20"),
    pytest.param(3000, id="3000", marks=pytest.mark.long),
]
