"""The picture of the world one prediction reads: configuration and opened tables, frozen.

``build_state`` reads everything once (the configuration was already loaded by
``policyd.sources.config``; here the alias tables are opened); ``serve`` swaps the result in
one step on reload, and ``check`` builds the same object, so both predict from the same state.
"""

from __future__ import annotations

from dataclasses import dataclass

from policyd.rules.aliases import AliasMaps
from policyd.sources.config import Config
from policyd.sources.tables import load_alias_maps


@dataclass(frozen=True, slots=True)
class State:
    """Everything a prediction needs, built off to the side and swapped in one step."""

    config: Config
    aliases: AliasMaps
    generation: int


def build_state(config: Config, generation: int) -> State:
    """Open the alias maps for ``config``; raises ConfigError when one cannot be used."""
    aliases = load_alias_maps(config.alias_maps, recipient_delimiter=config.recipient_delimiter)
    return State(config, aliases, generation)
