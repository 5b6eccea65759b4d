"""A small dataclass for MicroPython, for the classes of protocol/'s core.

MicroPython keeps no class annotations, so a class cannot be read for its
fields. Each dataclass in the core names them, in order, in ``__match_args__``:
CPython's dataclass makes the same tuple (and keeps one a class sets), and
tests/test_micropython_port.py holds the two equal for every such class.
Defaults are the class attributes the compiler does keep. Frozen classes are
not enforced here; CPython enforces them, and the same code runs on both.
"""

_MISSING = object()


class _Field:
    def __init__(self, default, default_factory):
        self.default = default
        self.default_factory = default_factory


def field(default=_MISSING, default_factory=None):
    return _Field(default, default_factory)


def _default(value):
    if isinstance(value, _Field):
        if value.default_factory is not None:
            return value.default_factory()
        return value.default
    return value


def _build(cls, frozen):
    names = cls.__match_args__
    defaults = {name: getattr(cls, name, _MISSING) for name in names}

    def __init__(self, *args, **kwargs):
        if len(args) > len(names):
            raise TypeError(f"{cls.__name__} takes {len(names)} arguments")
        for i, name in enumerate(names):
            if i < len(args):
                value = args[i]
                if name in kwargs:
                    raise TypeError(f"{cls.__name__} got {name} twice")
            elif name in kwargs:
                value = kwargs.pop(name)
            else:
                value = _default(defaults[name])
                if value is _MISSING:
                    raise TypeError(f"{cls.__name__} needs {name}")
            setattr(self, name, value)
        for name in kwargs:
            if name not in names:
                raise TypeError(f"{cls.__name__} has no field {name}")
        post = getattr(self, "__post_init__", None)
        if post is not None:
            post()

    def __eq__(self, other):
        if other.__class__ is not self.__class__:
            return NotImplemented
        return all(getattr(self, n) == getattr(other, n) for n in names)

    def __repr__(self):
        inner = ", ".join(f"{n}={getattr(self, n)!r}" for n in names)
        return f"{cls.__name__}({inner})"

    cls.__init__ = __init__
    cls.__eq__ = __eq__
    cls.__repr__ = __repr__
    if frozen:

        def __hash__(self):
            return hash(tuple(getattr(self, n) for n in names))

        cls.__hash__ = __hash__
    # The field objects were only markers for the defaults above.
    for name in names:
        if isinstance(getattr(cls, name, None), _Field):
            value = getattr(cls, name)
            if value.default is _MISSING:
                delattr(cls, name)
            else:
                setattr(cls, name, value.default)
    return cls


def replace(obj, **changes):
    """A copy of ``obj`` with ``changes`` to its fields (through ``__init__``)."""
    names = obj.__class__.__match_args__
    for name in changes:
        if name not in names:
            raise TypeError(f"{obj.__class__.__name__} has no field {name}")
    return obj.__class__(*[changes[n] if n in changes else getattr(obj, n) for n in names])


def dataclass(cls=None, frozen=False, **_options):
    if cls is None:
        return lambda c: _build(c, frozen)
    return _build(cls, frozen)
