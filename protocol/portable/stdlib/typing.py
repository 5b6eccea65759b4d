"""The names protocol/ imports from typing, for MicroPython, which has no typing module.

Annotations are never evaluated there, so the names only need to exist.
"""

TYPE_CHECKING = False


class _Anything:
    def __getitem__(self, _item):
        return self

    def __call__(self, *_args, **_kwargs):
        return self


Any = Final = Literal = ClassVar = Optional = Union = Protocol = _Anything()


def cast(_kind, value):
    return value
