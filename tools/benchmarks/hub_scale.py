"""``./tools/bench hub-scale``: the hub at national scale.

Parts (each a module of its own, called from here):

* the herd (``_herd.measure``): 1,000 enrolled kiosks come back at once after an
  outage, each with a backlog of 50 check-ins (100,000 deltas), against ``haven
  hub serve`` with its default bounds; the hub sheds load with busy answers. Then
  the same herd against a hub that sheds nothing (``--max-rounds`` ten times the
  kiosks), in the same run: the time until all is on the hub and the round times
  beside each other.
"""

from __future__ import annotations

from . import Context, Result, _herd, benchmark


@benchmark("hub-scale", "The hub at national scale: a thousand kiosks back at once")
def hub_scale(ctx: Context) -> Result:
    count, checkins = (200, 10) if ctx.quick else (1000, 50)
    ctx.log(f"the herd: {count:,} kiosks, {checkins} check-ins each")
    herd = _herd.measure(ctx, count, checkins)
    ctx.log("the same herd, the hub shedding nothing")
    peer = _herd.measure(ctx, count, checkins, ["--max-rounds", str(10 * count)],
                         name="unshed")
    return Result(rows=_herd.rows(herd, peer),
                  columns=["what", "value", "detail", "goal", "met"],
                  notes=["The herd: real enrolled kiosks (their own keys and certificates) "
                         "from one process (tools/benchmarks/_herd.py), each pushing its "
                         "backlog as signed batches and keeping its session open after; "
                         "the hub (SQLite, on disk) as a subprocess with its default "
                         "bounds for this machine. Kiosks told busy come back after the "
                         "hub's wait times 1 to 1.5."],
                  params={"kiosks": count, "checkins": checkins, "herd": herd,
                          "unshed": peer})
