"""The picture of the world one prediction reads, built from one path in one place.

``load_state(path, generation)`` reads everything a prediction needs, in this order: the
configuration file (``policyd.sources.config``), the Exchange exports it names
(``policyd.sources.exports``), the certificate with its CA bundle (``policyd.sources.pem``) and
the alias tables (``policyd.sources.tables``), and freezes them into one ``State``. ``serve``
calls it at start and on every reload and swaps the result in one step; ``check`` calls the same
function, so both predict from the same state. ``doctor`` stops after the certificate
(``load_config``): it audits the configuration without opening the alias tables. Any problem
raises ``ConfigError`` naming the file and the key.

With ``[postfix] config_directory``, ``build_state`` also reads Postfix's own configuration:
routing, the certificate and bind address of every smtp(8) service, ``virtual_alias_maps``,
``recipient_delimiter`` and the domain postsrsd writes. Explicit ``[onprem]`` keys win over
what Postfix says (docs/postfix.md).

"""

from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass, field, replace

from policyd.errors import ConfigError
from policyd.rules.aliases import AliasMaps
from policyd.rules.model import DEFAULT_TENANT, CertificateFacts, NamedTenant, OnPrem
from policyd.rules.predictor import Predictor
from policyd.rules.relay import Router, ServicePicture
from policyd.rules.routing import PostfixView, client_tls, split_list
from policyd.sources.config import Config, TenantFile, read_config_file
from policyd.sources.exports import load_accepted_domains, load_inbound_connectors
from policyd.sources.files import require_readable
from policyd.sources.routes import CONFIG_KEY, LoadedPostfix, read_postfix_view
from policyd.sources.srs import SrsDomain, read_srs_domain
from policyd.sources.tables import load_alias_maps


def read_certificate(path: str, *, ca_bundle: str = "") -> CertificateFacts:
    """``policyd.sources.pem.read_certificate``, imported when first needed: the cryptography
    package it uses is large, and a configuration without a certificate never reads one
    (``replay`` starts faster)."""
    from policyd.sources.pem import read_certificate as read

    return read(path, ca_bundle=ca_bundle)


#: Where a value came from when the configuration file gave it.
FROM_TOML = "m365-policyd.toml"


@dataclass(frozen=True, slots=True)
class State:
    """Everything a prediction needs, built off to the side and swapped in one step."""

    config: Config
    aliases: AliasMaps
    generation: int
    #: With ``[postfix]``: how Postfix routes, and the instance's files (None without).
    router: Router | None = None
    postfix: LoadedPostfix | None = None
    #: With ``[postfix]`` and postsrsd in sender_canonical_maps: the domain it writes.
    srs: SrsDomain | None = None
    #: Tenant choice and the relay rule for this generation (built from the fields above).
    predictor: Predictor = field(init=False)

    def __post_init__(self) -> None:
        config = self.config
        tenants = config.tenants or (
            NamedTenant(DEFAULT_TENANT, config.tenant, config.tenant_endpoints, default=True),
        )
        object.__setattr__(self, "predictor", Predictor(tenants, config.onprem, self.router))

    @property
    def watched_files(self) -> tuple[str, ...]:
        """Every file whose change means a reload: config inputs, alias tables, Postfix's."""
        postfix = self.postfix.files if self.postfix is not None else ()
        srs = (self.srs.file,) if self.srs is not None and self.srs.file else ()
        return tuple(
            dict.fromkeys((*self.config.input_files, *self.aliases.watched_files, *postfix, *srs))
        )

    @property
    def uses_subprocess(self) -> bool:
        """Some lookup may block on ``postmap -q``: predict such requests off the reactor."""
        router = self.router
        return self.aliases.uses_subprocess or (router is not None and router.uses_subprocess)


def load_state(path: str, generation: int) -> State:
    """The configuration at ``path`` and every file it names, as state ``generation``."""
    return build_state(load_config(path), generation)


def load_config(path: str) -> Config:
    """The configuration at ``path`` with the exports and certificates it names, per tenant."""
    file = read_config_file(path)
    # The daemon's own failure to read a file is a configuration error, not a prediction.
    if file.certificate_path:
        require_readable(file.certificate_path, file.path, "onprem.certificate", "certificate")
    if file.ca_bundle:
        require_readable(file.ca_bundle, file.path, "onprem.ca_bundle", "CA bundle")
    for declared in file.tenants:
        if declared.certificate_path:
            require_readable(
                declared.certificate_path,
                declared.file,
                f"tenants.{declared.name}.certificate",
                "certificate",
            )
    certificate = (
        read_certificate(file.certificate_path, ca_bundle=file.ca_bundle)
        if file.certificate_path
        else None
    )
    tenants = tuple(_named_tenant(declared, file.ca_bundle) for declared in file.tenants)
    chosen = next((t for t in tenants if t.default), tenants[0])
    watched = [file.path]
    for declared in file.tenants:
        watched += [declared.accepted_domains_file, declared.inbound_connectors_file]
    watched += [file.certificate_path, file.ca_bundle, *file.included]
    watched += [declared.certificate_path for declared in file.tenants]
    return Config(
        path=file.path,
        server=file.server,
        tenant=chosen.tenant,
        onprem=replace(file.onprem, certificate=certificate),
        alias_maps=file.alias_maps,
        policy=file.policy,
        log=file.log,
        outcomes=file.outcomes,
        certificate_path=file.certificate_path,
        ca_bundle=file.ca_bundle,
        input_files=tuple(dict.fromkeys(f for f in watched if f)),
        recipient_delimiter=file.recipient_delimiter,
        postfix=file.postfix,
        onprem_keys=file.onprem_keys,
        tenant_endpoints=file.tenant_endpoints,
        tenants=tenants,
        submission=file.submission,
    )


def _named_tenant(declared: TenantFile, ca_bundle: str) -> NamedTenant:
    """One tenant with its exports and its own certificate read."""
    accepted = declared.tenant.accepted_domains
    if declared.accepted_domains_file:
        accepted += load_accepted_domains(declared.accepted_domains_file)
    connectors = declared.tenant.connectors
    if declared.inbound_connectors_file:
        connectors += load_inbound_connectors(declared.inbound_connectors_file)
    certificate = (
        read_certificate(declared.certificate_path, ca_bundle=ca_bundle)
        if declared.certificate_path
        else None
    )
    return NamedTenant(
        declared.name,
        replace(declared.tenant, accepted_domains=accepted, connectors=connectors),
        endpoints=declared.endpoints,
        sender_domains=frozenset(declared.sender_domains),
        certificate=certificate,
        certificate_path=declared.certificate_path,
        default=declared.default,
    )


def build_state(config: Config, generation: int) -> State:
    """Open the alias maps (and Postfix, with ``[postfix]``); raises ConfigError."""
    directory = config.postfix.config_directory
    if not directory:
        aliases = load_alias_maps(config.alias_maps, recipient_delimiter=config.recipient_delimiter)
        return State(config, aliases, generation)
    postfix = read_postfix_view(directory)
    view = postfix.view
    keys = config.onprem_keys
    # doctor judges the domain postsrsd's configuration names; predictions ask postsrsd itself
    # (policyd.rules.rewrite), so only an explicit onprem.srs_domain is still a guess.
    srs = read_srs_domain(view.parameters, config.postfix.postsrsd_config)
    alias_specs = (
        config.alias_maps
        if "alias_maps" in keys
        else tuple(split_list(view.parameter("virtual_alias_maps")))
    )
    delimiter = (
        config.recipient_delimiter
        if "recipient_delimiter" in keys
        else view.parameter("recipient_delimiter")
    )
    aliases = load_alias_maps(
        alias_specs,
        recipient_delimiter=delimiter,
        config_directory=directory,
        config_key="onprem.alias_maps" if "alias_maps" in keys else "main.cf: virtual_alias_maps",
    )
    pictures = {
        name: _service_picture(config, view, name)
        for name, service in view.services.items()
        if service.command == "smtp"
    }
    fallback = ServicePicture(config.onprem, FROM_TOML, FROM_TOML)
    router = Router(
        view,
        pictures,
        fallback,
        config.tenant,
        endpoint_globs=tuple(g for t in config.tenants for g in t.endpoints)
        or config.tenant_endpoints,
        uses_subprocess=postfix.tables.uses_subprocess,
        send_as=dict(config.submission.send_as),
        listener=postfix.listener,
    )
    return State(config, aliases, generation, router, postfix, srs)


def _service_picture(config: Config, view: PostfixView, service: str) -> ServicePicture:
    """The certificate and egress addresses one smtp(8) service shows Microsoft 365 when it
    uses TLS; ``Router`` drops the certificate for a next hop whose TLS level is ``none``
    (``smtp_tls_policy_maps`` decides per next hop)."""
    keys = config.onprem_keys
    tls = client_tls(view, service)
    absent = ""
    certificate: CertificateFacts | None
    if not tls.certificate_files:
        # Whatever file onprem.certificate names, Microsoft 365 sees none.
        certificate, certificate_from = None, tls.certificate_from
        absent = tls.no_files_because
    elif "certificate" in keys:
        # The daemon reads this copy (e.g. Postfix's own file holds a key it may not read).
        certificate = config.onprem.certificate
        certificate_from = f"{FROM_TOML}: onprem.certificate"
    else:
        certificate = _presented(tls.certificate_files, config.ca_bundle)
        certificate_from = tls.certificate_from
    if "egress_addresses" in keys:
        egress = config.onprem.egress_addresses
        egress_from = f"{FROM_TOML}: onprem.egress_addresses"
    elif tls.bind_address:
        try:
            egress = (ipaddress.ip_address(tls.bind_address.strip("[]")),)
        except ValueError:
            raise ConfigError(
                view.config_directory,
                CONFIG_KEY,
                f"{tls.bind_from} = {tls.bind_address} is not an IP address; set "
                "onprem.egress_addresses to the address Microsoft 365 sees",
            ) from None
        egress_from = tls.bind_from
    else:
        egress, egress_from = (), ""
        if any(c.sender_ip_addresses for c in config.tenant.relay_connectors):
            raise ConfigError(
                os.path.join(view.config_directory, "main.cf"),
                CONFIG_KEY,
                f"{tls.bind_from.split(': ', 1)[-1]} is empty for master.cf service {service}, "
                "so the address Microsoft 365 sees cannot be derived; set "
                "onprem.egress_addresses (behind NAT: the public address)",
            )
    onprem = OnPrem(
        egress_addresses=egress,
        certificate=certificate,
        srs_domain=config.onprem.srs_domain,
        local_domains=config.onprem.local_domains,
        certificate_absent=absent,
    )
    return ServicePicture(onprem, certificate_from, egress_from)


def _presented(files: tuple[str, ...], ca_bundle: str) -> CertificateFacts:
    """The certificate in ``smtp_tls_chain_files`` / ``smtp_tls_cert_file``: the first file
    that holds a usable one (chain files may hold the key first)."""
    first = read_certificate(files[0], ca_bundle=ca_bundle)
    if first.readable:
        return first
    for path in files[1:]:
        candidate = read_certificate(path, ca_bundle=ca_bundle)
        if candidate.readable:
            return candidate
    return first
