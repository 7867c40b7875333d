"""The hub's plugin hooks. These docstrings are the plugin documentation.

A plugin is any module or object with functions marked by :data:`hub.hookimpl` whose
names match the specs below. Installed packages register through the entry-point group
``hub.adapters``; the hub's own built-ins are registered the same way. A plugin may accept
only the arguments it needs (pluggy's opt-in arguments), so new arguments can be added
later without breaking it.

The pipeline hooks receive ``hub`` first: the running hub (configuration, mappings,
adapters, the hub's services). A plugin that needs it takes it as a parameter; there is no
process-global "current hub". Plugins write to the store only through ``hub.services``
(for example :mod:`hub.services.holds`), never through units of work of their own.

Hooks are synchronous. Work that needs I/O (a GIS lookup, a payment intent) belongs in an
adapter, which the hook can hand back; the engine runs it through the outbox.

docs/plugins.md has one section per hook (checked by tests/test_hookspecs.py).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:
    from hub.adapters import Adapter
    from hub.model import Case, CaseStatus, DispatchDecision, PeriodicJob, Route, StatusEvent
    from hub.services.runtime import Hub

PROJECT = "hub"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


# --------------------------------------------------------------------------- registration


@hookspec
def hub_register_adapters() -> list[type[Adapter]]:
    """Contribute department adapter classes.

    Return a list of :class:`hub.adapters.Adapter` subclasses. Each class's ``name`` must be
    unique across all installed plugins; the department configuration refers to it by that
    name. Called once when the plugin manager starts.

    Example::

        @hookimpl
        def hub_register_adapters():
            return [StreetlightsAdapter]
    """


# --------------------------------------------------------------------------- intake pipeline


@hookspec
def hub_enrich_case(hub: Hub, case: Case, context: dict[str, Any]) -> dict[str, Any] | None:
    """Add facts to a case before it is routed (coordinates, address, district, asset id).

    :param hub: the running hub (config, mappings, adapters).
    :param case: the canonical case; read it, do not mutate it.
    :param context: shared per-intake scratch space (for example ``context["flags"]``).
    :return: a dict of fields to set on the case (``attributes`` entries are merged), or
        None when there is nothing to add. Every returned change is recorded on the case
        timeline. An implementation must not block intake on a slow service: on failure
        it returns None and adds ``"enrichment_pending"`` to ``context["flags"]``.
    """


@hookspec(firstresult=True)
def hub_choose_route(hub: Hub, case: Case, default: Route | None) -> Route | None:
    """Choose the department (and work-order type, priority, SLA) for a case.

    ``hub`` is the running hub (config, mappings, adapters).
    Called after enrichment. ``default`` is the route from the service catalogue and the
    mapping rules (None when nothing matched). The first implementation that returns a
    :class:`hub.model.Route` wins (``firstresult``); return None to let others decide.
    The built-in catalogue router runs last and returns ``default``.
    """


@hookspec
def hub_before_dispatch(hub: Hub, case: Case, department: str) -> DispatchDecision | None:
    """Decide whether a routed case may be sent to its department now.

    ``hub`` is the running hub (config, mappings, adapters).
    Return :class:`hub.model.DispatchDecision` with ``hold=True`` and a reason to hold it
    (for example a fee not paid yet: ``state="awaiting_payment"``); return None to let it
    go. If any implementation holds, the case waits; the holding plugin releases it later
    through the hub's services (:mod:`hub.services.holds`). Called inside the intake
    transaction: keep it fast.
    """


# --------------------------------------------------------------------------- status


@hookspec
def hub_on_status_change(
    hub: Hub, case: Case, old: CaseStatus, new: CaseStatus, event: StatusEvent | None
) -> None:
    """React to a canonical status change of a case (notify a CRM, send a message).

    :param hub: the running hub; durable follow-ups go through its services (the outbox).
    :param case: the case after the change (closure and evidence included).
    :param old: the status before.
    :param new: the status after.
    :param event: the department event that caused it, or None for hub-side changes.

    Called after the change is committed. Implementations must not raise; anything
    durable they need (a callback POST) must go through the outbox so it is retried.
    """


# --------------------------------------------------------------------------- housekeeping


@hookspec
def hub_periodic_jobs(hub: Hub) -> list[PeriodicJob] | None:
    """Ask the workers' schedulers to run a job of this plugin periodically.

    :param hub: the running hub; return no jobs when your department is not configured.
    :return: a list of :class:`hub.model.PeriodicJob` (``name``, ``every_seconds``, and
        ``run``: an async function taking the hub), or None.

    Every ``hub worker`` runs a scheduler (unless ``--no-scheduler``), but each run is
    first claimed in the database by (job name, time slot), so one process runs each slot
    however many workers there are; the outcome (``ok``/``failed`` and the result's
    ``as_dict()``) is recorded in ``job_runs``. A run that raises is recorded as failed
    and the next slot tries again. Use it for sweeps that must not depend on a single
    event arriving (release holds that outlived their limit, heal a lost enqueue); write
    through the hub's services, like every hook.
    """
