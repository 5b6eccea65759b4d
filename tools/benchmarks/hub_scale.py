"""``./tools/bench hub-scale``: the hub at national scale.

Parts (each a module of its own, called from here):

* the herd (``_herd.measure``): 1,000 enrolled kiosks come back at once after an
  outage, each with a backlog of 50 check-ins (100,000 deltas), against ``haven
  hub serve`` with its default bounds; the hub sheds load with busy answers. Then
  the same herd against a hub that sheds nothing (``--max-rounds`` ten times the
  kiosks), in the same run: the time until all is on the hub and the round times
  beside each other.
* PostgreSQL (``_hub_pg.measure``): the same herd against a hub whose store is on a
  cluster started for the run with PostgreSQL's durable defaults, its deltas/s beside
  the SQLite herd's; the hub's Python alone on the same deltas (decode, verify, check,
  seal; no database) and a bare ``COPY`` of the same rows, beside it; the hub's RSS
  per connected kiosk on PostgreSQL.
* the failover (``_failover.measure``): real kiosks syncing to a hub (``haven hub
  serve``) whose store is on a pg_auto_failover formation (a monitor, a primary
  and a synchronous standby, on this machine), the primary killed mid-load, with
  pg_auto_failover's default clocks (``--quick``: the tests' short ones).
"""

from __future__ import annotations

from . import Context, Result, _failover, _herd, _hub_pg, benchmark


@benchmark("hub-scale", "The hub at national scale: a thousand kiosks back at once")
def hub_scale(ctx: Context) -> Result:
    count, checkins = (200, 10) if ctx.quick else (1000, 50)
    ctx.log(f"the herd: {count:,} kiosks, {checkins} check-ins each")
    with _hub_pg.watching(ctx, "herd") as sqlite_hub:  # its CPU, beside PostgreSQL's
        herd = _herd.measure(ctx, count, checkins)
    ctx.log("the same herd, the hub shedding nothing")
    peer = _herd.measure(ctx, count, checkins, ["--max-rounds", str(10 * count)],
                         name="unshed", limit=600.0)  # one that collapses: say how far it got
    ctx.log("the same herd against a hub whose store is on PostgreSQL, and its floors")
    on_pg = _hub_pg.measure(ctx, count, checkins)
    failover_kiosks = 3 if ctx.quick else 12
    ctx.log(f"the failover: {failover_kiosks} kiosks syncing, the primary killed")
    failover = _failover.measure(ctx, failover_kiosks, short_clocks=ctx.quick)
    return Result(rows=_herd.rows(herd, peer) + _hub_pg.rows(on_pg, herd, sqlite_hub.hub_cpu)
                  + _failover.rows(failover),
                  columns=["what", "value", "detail", "goal", "met"],
                  notes=["The herd: real enrolled kiosks (their own keys and certificates) "
                         "from one process (tools/benchmarks/_herd.py), each pushing its "
                         "backlog as signed batches and keeping its session open after; "
                         "the hub (SQLite, on disk) as a subprocess with its default "
                         "bounds for this machine. Kiosks told busy come back after the "
                         "hub's wait times 1 to 1.5.",
                         "The failover: a pg_auto_failover monitor, primary and synchronous "
                         "standby on this machine (tests/failover_cluster.py); real kiosks "
                         "driven as their runtime drives them (tests/failover_kiosks.py) "
                         "check patients in every 0.3 s and sync to haven hub serve on the "
                         "multi-host URL; the primary's keeper and postmaster are SIGKILLed "
                         "mid-load.",
                         "PostgreSQL: the same herd against a hub whose store is on a cluster "
                         "started for the run on this machine with PostgreSQL's durable "
                         "defaults (fsync, synchronous_commit, full_page_writes on), as "
                         "production runs it; the server, the hub and the load generator "
                         "share the machine's two cores. The Python-alone floor and the COPY "
                         "run in the benchmark's process (tools/benchmarks/_hub_pg.py)."],
                  params={"kiosks": count, "checkins": checkins, "herd": herd,
                          "unshed": peer, "postgresql": on_pg, "failover": failover})
