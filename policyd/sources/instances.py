"""Which Postfix instance the daemon reads, and whether other instances reach Microsoft 365.

Postfix's multi-instance support (MULTI_INSTANCE_README, postmulti(1)): the primary instance's
main.cf lists the secondary instances' configuration directories in
``multi_instance_directories``; each secondary names itself with ``multi_instance_name``.
Debian starts each one as a systemd unit ``postfix@NAME`` (``postfix@-`` is the primary, NAME
is the directory's base name, e.g. ``postfix@postfix-out`` for ``/etc/postfix-out``).

``[postfix] config_directory`` names the instance the daemon predicts for. When it names the
primary instance while secondary instances route the sample envelopes to Microsoft 365, their
routes, TLS and certificates are not the ones predicted: doctor warns (the choice made here;
the daemon never reads more than one instance).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from policyd.rules.routing import split_list


@dataclass(frozen=True, slots=True)
class Instance:
    """One Postfix instance as ``main.cf`` describes it."""

    directory: str
    name: str  # multi_instance_name, "" when unset
    secondaries: tuple[str, ...]  # multi_instance_directories (non-empty: the primary)

    @property
    def unit(self) -> str:
        """Debian's systemd unit for this instance (``postfix@-`` for the primary)."""
        base = os.path.basename(os.path.normpath(self.directory))
        return "postfix@-" if self.secondaries or base == "postfix" else f"postfix@{base}"

    def __str__(self) -> str:
        label = self.name or ("primary" if self.secondaries else "")
        shown = f"{label} " if label else ""
        return f"instance {shown}({self.directory}; Debian unit {self.unit})"


@dataclass(frozen=True, slots=True)
class SecondaryRoutes:
    """A secondary instance and the sample envelopes it sends to Microsoft 365."""

    instance: Instance
    to_microsoft: tuple[str, ...]  # e.g. "own-domain senders -> smtp:[x]:25"
    error: str = ""  # why it could not be read


def describe(directory: str, parameters: Mapping[str, str]) -> Instance:
    """The instance in ``directory`` from its ``postconf -x`` parameters."""
    return Instance(
        directory,
        parameters.get("multi_instance_name", "").strip(),
        tuple(split_list(parameters.get("multi_instance_directories", ""))),
    )


def secondary_routes(
    instance: Instance,
    route: Callable[[str], tuple[tuple[str, ...], Mapping[str, str], str]],
) -> tuple[SecondaryRoutes, ...]:
    """For each secondary of ``instance``: ``route(directory)`` gives (the sample envelopes it
    sends to Microsoft 365, its parameters, an error)."""
    found: list[SecondaryRoutes] = []
    for directory in instance.secondaries:
        reached, parameters, error = route(directory)
        found.append(SecondaryRoutes(describe(directory, parameters), reached, error))
    return tuple(found)


def names(instances: Sequence[SecondaryRoutes]) -> str:
    return ", ".join(str(s.instance) for s in instances)
