"""collections.abc.Mapping's mixin methods, for MicroPython, which has no collections.abc.

A class that defines ``__getitem__``, ``__iter__`` and ``__len__`` gets ``get``,
``keys``, ``items``, ``values``, ``in`` and ``==`` from here, as it would from
``Mapping`` on CPython (where ``protocol.crdt.clock`` takes the real one).
"""


class Mapping:
    def get(self, key, default=None):
        try:
            return self[key]
        except KeyError:
            return default

    def __contains__(self, key):
        try:
            self[key]
        except KeyError:
            return False
        return True

    def keys(self):
        return list(self)

    def items(self):
        return [(key, self[key]) for key in self]

    def values(self):
        return [self[key] for key in self]

    def __eq__(self, other):
        if not isinstance(other, (dict, Mapping)):
            return NotImplemented
        return dict(self.items()) == dict(other.items())
