"""The picture of the world one prediction reads, built from one path in one place.

``load_state(path, generation)`` reads everything a prediction needs, in this order: the
configuration file (``policyd.sources.config``), the Exchange exports it names
(``policyd.sources.exports``), the certificate with its CA bundle (``policyd.sources.pem``) and
the alias tables (``policyd.sources.tables``), and freezes them into one ``State``. ``serve``
calls it at start and on every reload and swaps the result in one step; ``check`` calls the same
function, so both predict from the same state. ``doctor`` stops after the certificate
(``load_config``): it audits the configuration without opening the alias tables. Any problem
raises ``ConfigError`` naming the file and the key.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from policyd.rules.aliases import AliasMaps
from policyd.rules.model import Tenant
from policyd.sources.config import Config, read_config_file
from policyd.sources.exports import load_accepted_domains, load_inbound_connectors
from policyd.sources.pem import read_certificate
from policyd.sources.tables import load_alias_maps


@dataclass(frozen=True, slots=True)
class State:
    """Everything a prediction needs, built off to the side and swapped in one step."""

    config: Config
    aliases: AliasMaps
    generation: int


def load_state(path: str, generation: int) -> State:
    """The configuration at ``path`` and every file it names, as state ``generation``."""
    return build_state(load_config(path), generation)


def load_config(path: str) -> Config:
    """The configuration at ``path`` with the exports and the certificate it names."""
    file = read_config_file(path)
    accepted = file.tenant.accepted_domains
    if file.accepted_domains_file:
        accepted += load_accepted_domains(file.accepted_domains_file)
    connectors = file.tenant.connectors
    if file.inbound_connectors_file:
        connectors += load_inbound_connectors(file.inbound_connectors_file)
    certificate = (
        read_certificate(file.certificate_path, ca_bundle=file.ca_bundle)
        if file.certificate_path
        else None
    )
    watched = (
        file.path,
        file.accepted_domains_file,
        file.inbound_connectors_file,
        file.certificate_path,
        file.ca_bundle,
    )
    return Config(
        path=file.path,
        server=file.server,
        tenant=Tenant(accepted, connectors, file.tenant.reject_direct_send),
        onprem=replace(file.onprem, certificate=certificate),
        alias_maps=file.alias_maps,
        policy=file.policy,
        log=file.log,
        outcomes=file.outcomes,
        certificate_path=file.certificate_path,
        ca_bundle=file.ca_bundle,
        input_files=tuple(dict.fromkeys(f for f in watched if f)),
        recipient_delimiter=file.recipient_delimiter,
    )


def build_state(config: Config, generation: int) -> State:
    """Open the alias tables of ``config``; raises ConfigError when one cannot be used."""
    aliases = load_alias_maps(config.alias_maps, recipient_delimiter=config.recipient_delimiter)
    return State(config, aliases, generation)
