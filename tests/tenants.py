"""The IP-connector tenant most tests run against, as TOML for ``serve`` and as model objects.

Microsoft 365 side: ``contoso.com`` accepted, one OnPremises inbound connector ``From
on-premises`` for ``203.0.113.10/32``. Our side: that address is the egress address, so mail
from an accepted-domain sender relays and a foreign or null sender is refused
(``no-connector`` / ``sender-not-accepted``, docs/relay-rules.md).
"""

from __future__ import annotations

import ipaddress

from policyd.rules.model import AcceptedDomain, InboundConnector, OnPrem, Tenant
from policyd.sources.config import (
    Config,
    LogSettings,
    OutcomeSettings,
    PolicySettings,
    ServerSettings,
)

EGRESS = "203.0.113.10"
CONNECTOR_NAME = "From on-premises"

#: The connector and our side as ``policyd.rules.model`` objects (engine and rule tests).
IP_CONNECTOR = InboundConnector(
    CONNECTOR_NAME, sender_ip_addresses=(ipaddress.IPv4Network(f"{EGRESS}/32"),)
)
ONPREM = OnPrem(egress_addresses=(ipaddress.ip_address(EGRESS),))
#: The engine and cache tests' tenant: the IP connector and a certificate connector for
#: ``*.contoso.com``.
IP_AND_CERTIFICATE_TENANT = Tenant(
    accepted_domains=(AcceptedDomain("contoso.com"),),
    connectors=(
        IP_CONNECTOR,
        InboundConnector("By certificate", tls_sender_certificate_name="*.contoso.com"),
    ),
)


def model_config(
    tenant: Tenant,
    onprem: OnPrem = ONPREM,
    *,
    policy: PolicySettings | None = None,
    alias_maps: tuple[str, ...] = (),
) -> Config:
    """A ``Config`` as ``load_config`` would return it, built from model objects (engine tests):
    default ``[server]``, ``[log]`` and ``[outcomes]``, no certificate, no files to watch."""
    return Config(
        path="/etc/m365-policyd/m365-policyd.toml",
        server=ServerSettings(),
        tenant=tenant,
        onprem=onprem,
        alias_maps=alias_maps,
        policy=policy or PolicySettings(),
        log=LogSettings(),
        outcomes=OutcomeSettings(),
        certificate_path="",
        ca_bundle="",
        input_files=(),
    )


def ip_tenant_toml(
    *,
    action: str = "defer",
    accepted: tuple[str, ...] = ("contoso.com",),
    connector: str = "",
    onprem: str = "",
    policy: str = "",
    tail: str = "",
) -> str:
    """The tenant as a configuration body (``[tenant]``, ``[onprem]``, ``[policy]``).

    ``connector``, ``onprem`` and ``policy`` are extra TOML lines for those tables; ``tail`` is
    appended (more tables). ``action`` is ``policy.action``.
    """
    domains = ", ".join(f'"{domain}"' for domain in accepted)
    return (
        "[tenant]\n"
        f"accepted_domains = [{domains}]\n"
        "\n"
        "[[tenant.inbound_connector]]\n"
        f'name = "{CONNECTOR_NAME}"\n'
        'connector_type = "OnPremises"\n'
        "enabled = true\n"
        f'sender_ip_addresses = ["{EGRESS}/32"]\n'
        f"{_lines(connector)}"
        "\n"
        "[onprem]\n"
        f'egress_addresses = ["{EGRESS}"]\n'
        f"{_lines(onprem)}"
        "\n"
        "[policy]\n"
        f'action = "{action}"\n'
        f"{_lines(policy)}"
        f"{_block(tail)}"
    )


def _lines(text: str) -> str:
    return text.strip("\n") + "\n" if text.strip() else ""


def _block(text: str) -> str:
    return "\n" + text.strip("\n") + "\n" if text.strip() else ""
