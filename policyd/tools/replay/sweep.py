"""``--sweep-assumptions``: one state per combination of the deciding assumptions.

The assumptions are those of ``docs/relay-rules.md``.

Each state is today's with every tenant's ``Tenant.assumptions`` replaced (and the router
rebuilt around the replaced default tenant), so each combination predicts through the same
``Predictor`` as today's configuration. The keys that decide nothing yet
(``policyd.rules.assumptions.Doubt.decides``) are left at today's setting.
"""

from __future__ import annotations

import itertools
from dataclasses import replace

from policyd.rules.assumptions import DOUBTS, Assumptions
from policyd.rules.model import Tenant
from policyd.sources.state import State

#: The keys a sweep varies: those some rule reads.
SWEPT_KEYS: tuple[str, ...] = tuple(doubt.key for doubt in DOUBTS if doubt.decides)


def today(state: State) -> Assumptions:
    """The assumptions today's configuration predicts with (the default tenant's)."""
    return state.config.tenant.assumptions


def combinations(base: Assumptions) -> list[Assumptions]:
    """Every setting of ``SWEPT_KEYS`` other than ``base``'s, in a stable order."""
    found = []
    for values in itertools.product((True, False), repeat=len(SWEPT_KEYS)):
        candidate = replace(base, **dict(zip(SWEPT_KEYS, values, strict=True)))
        if candidate != base:
            found.append(candidate)
    return found


def with_assumptions(state: State, assumptions: Assumptions) -> State:
    """``state`` with every tenant predicting under ``assumptions``."""

    def change(tenant: Tenant) -> Tenant:
        return replace(tenant, assumptions=assumptions)

    config = state.config
    tenants = tuple(replace(named, tenant=change(named.tenant)) for named in config.tenants)
    return replace(
        state,
        config=replace(config, tenant=change(config.tenant), tenants=tenants),
        router=state.router.retuned(change) if state.router is not None else None,
    )


def label(assumptions: Assumptions, base: Assumptions) -> str:
    """The settings that differ from ``base``, as the configuration file writes them."""
    changed = [assumptions.setting(key) for key in changed_keys(assumptions, base)]
    return ", ".join(changed) or "today's configuration"


def changed_keys(assumptions: Assumptions, base: Assumptions) -> dict[str, bool]:
    """``{key: setting}`` for the keys where ``assumptions`` differs from ``base``."""
    return {
        key: assumptions.value(key)
        for key in SWEPT_KEYS
        if assumptions.value(key) != base.value(key)
    }
