"""The failover part of ``./tools/bench hub-scale``: the primary killed under load.

``measure`` builds a pg_auto_failover formation on this machine (a monitor, a
primary and a synchronous standby: ``tests/failover_cluster.py``) with
pg_auto_failover's default clocks, as in production (``--quick``: the tests'
short ones). It puts a hub's store on the formation's multi-host URL and runs
``haven hub serve`` as a subprocess. Real kiosks, driven as their runtime drives
them (``tests/failover_kiosks.py``), check patients in and sync. The primary's
keeper and postmaster are SIGKILLed mid-load; nobody tells the standby. The figures:
kill to promotion, promotion to each kiosk's first commit, and whether anything
acknowledged before the kill is missing on the new primary. Every check-in must
be on the hub exactly once once the kiosks' outboxes are empty.
"""

from __future__ import annotations

from typing import Any

from . import _hub_proc as hp

GOAL_RESUME_S = 30.0


def measure(ctx: Any, kiosks: int, short_clocks: bool) -> dict[str, Any]:
    from host.hub.hub import Hub, init_hub
    from tests.failover_cluster import start_formation
    from tests.failover_kiosks import checkins_on_hub, through_failover
    from tests.postgres_cluster import server_root
    from tests.test_sync_helpers import Kiosk

    hub_dir = ctx.workdir / "failover-hub"
    with server_root("haven-failover-bench-") as root, \
            start_formation(root, short_clocks=short_clocks) as formation:
        init_hub(hub_dir, database=formation.url)
        with Hub(hub_dir) as hub:
            desks = [Kiosk(ctx.workdir, f"failover-k{i}", hub, "A", site=f"Site {i}")
                     for i in range(kiosks)]
        try:
            with hp.hub_serving(hub_dir, ctx.workdir / "failover-hub.log") as served:
                run = through_failover(formation, desks, f"tcp://{served.host}:{served.port}",
                                       resume_wait=300.0, limit=600.0)
        finally:
            for k in desks:
                k.close()
        with Hub(hub_dir) as hub:
            on_hub = checkins_on_hub(hub)
    written = run.written()
    once = sum(1 for c in written if on_hub.get(c) == 1)
    figures = {**run.figures(), "exactly_once": once, "short_clocks": short_clocks,
               "errors": [repr(e) for e in run.errors]}
    ctx.log(f"failover: {figures}")
    return figures


def rows(r: dict[str, Any]) -> list[dict[str, Any]]:
    """``measure``'s figures as benchmark rows (what, value, detail, goal, met)."""
    clocks = ("the tests' short monitor clocks (unhealthy after 3 s, 5 s to demote)"
              if r["short_clocks"] else "pg_auto_failover's default clocks (unhealthy "
              "after 20 s, 30 s for the old primary to demote)")
    last = r["promotion_to_last_commit_s"]
    return [
        {"what": f"failover: primary killed under load, {r['kiosks']} kiosks syncing: kill "
                 "to promotion (s)", "value": r["kill_to_promotion_s"],
         "detail": f"{clocks}; the standby promoted by the monitor, nobody told it",
         "goal": "report", "met": True},
        {"what": "  promotion to every kiosk's first commit (s)", "value": last,
         "detail": f"the first kiosk's after {r['promotion_to_first_commit_s']} s; "
                   f"{r['failed_rounds']} kiosk rounds failed meanwhile",
         "goal": f"<= {GOAL_RESUME_S:.0f}",
         "met": last is not None and last <= GOAL_RESUME_S and not r["errors"]},
        {"what": "  acknowledged check-ins lost", "value": r["lost"],
         "detail": f"{r['acknowledged_before_kill']} acknowledged before the kill, on the "
                   f"new primary at its promotion; {r['exactly_once']} of {r['checkins']} "
                   "check-ins on the hub exactly once at the end",
         "goal": "0", "met": r["lost"] == 0 and r["exactly_once"] == r["checkins"]},
    ]
