"""A record's next view from its current one, for a write that saw all of it.

Theory of operation
-------------------
The reference merge (``protocol.crdt.record``) needs a record's whole write
log. The store no longer keeps a sealed body for every delta from the hub,
so for most records it holds only the merged rows. One kind of write needs
no more than those: a write whose context covers every current head of a
record that has no conflict (``covers``). Such a write becomes the only
head; every write before it is in its past, with a smaller stamp. So:

* a delete leaves the record deleted, with nothing in it;
* a put after a record whose heads are all deletes starts it afresh: its
  own assignments and additions only;
* any other put extends the live writes by itself: its assignments win
  their registers (it has the greatest dot), its removals take elements out
  (every add of them is in its past) and its additions put them in; a
  register it does not assign keeps its writer, and had no conflict before,
  so has none now.

That is exactly what ``RecordLog.view`` gives for the log plus the write,
without the log (``tests/test_store_collect.py`` holds it to it). Any other
write (concurrent with a head, or on a record in conflict) needs the log.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from protocol.crdt.clock import Dot
from protocol.crdt.delta import Delta
from protocol.crdt.record import RecordView


def covers(heads: Iterable[Dot], delta: Delta) -> bool:
    """Whether ``delta`` saw every one of ``heads`` (in its context, or an earlier write
    of its own node)."""
    return all(h in delta.ctx or (h.node == delta.node and h.stamp < delta.stamp)
               for h in heads)


def extends(view: RecordView | None, delta: Delta) -> bool:
    """Whether ``after`` gives the exact view for ``delta`` on ``view`` (None: no record)."""
    return view is None or (not view.conflicts and covers(view.heads, delta))


def after(view: RecordView | None, delta: Delta) -> RecordView:
    """The view of ``view``'s record with ``delta`` merged; only when ``extends``."""
    rid, dot = delta.record_id, delta.dot
    if delta.is_delete:
        return RecordView(rid, delta.type, True, {}, {}, (dot,), ())
    base = None if view is None or view.deleted else view
    fields: dict[int, Any] = dict(base.fields) if base else {}
    dots: dict[int, Dot] = dict(base.field_dots) if base else {}
    sets: dict[int, frozenset[str]] = dict(base.sets) if base else {}
    for key, value in delta.set.items():
        dots[key] = dot
        if value is None:
            fields.pop(key, None)
        else:
            fields[key] = value
    for key, elems in delta.remove.items():
        left = sets.get(key, frozenset()) - frozenset(elems)
        if left:
            sets[key] = left
        else:
            sets.pop(key, None)
    for key, elems in delta.add.items():
        sets[key] = sets.get(key, frozenset()) | frozenset(elems)
    return RecordView(rid, delta.type, False, fields, sets, (dot,), (), dots)
