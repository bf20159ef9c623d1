"""Routing as trivial-rewrite(8) resolves it, read from private Postfix configuration directories
with the real ``postconf`` and ``postmap`` (policyd.rules.routing, policyd.sources.routes)."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Callable, Mapping
from pathlib import Path

import pytest

from policyd.errors import ConfigError, RouteLookupError
from policyd.rules import endpoints
from policyd.rules.routing import client_tls, resolve
from policyd.sources.routes import read_postfix_view

pytestmark = pytest.mark.postfix

POSTMAP = shutil.which("postmap") or "/usr/sbin/postmap"

MASTER_CF = """\
smtp      unix  -       -       n       -       -       smtp
relay     unix  -       -       n       -       -       smtp
  -o syslog_name=postfix/$service_name
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
local     unix  -       n       n       -       -       local
virtual   unix  -       n       n       -       -       virtual
lmtp      unix  -       -       n       -       -       lmtp
relay-m365 unix -       -       n       -       -       smtp
  -o smtp_tls_chain_files=/etc/ssl/relay-m365.pem
  -o smtp_bind_address=203.0.113.10
  -o smtp_tls_security_level=encrypt
"""

BASE = {
    "compatibility_level": "3.6",
    "myhostname": "mta.contoso.com",
    "mydomain": "contoso.com",
    "myorigin": "$mydomain",
    "mydestination": "$myhostname, localhost",
    "inet_interfaces": "loopback-only",
    "alias_maps": "",
    "relay_domains": "",
}

MakeDir = Callable[..., Path]


def settle(directory: Path) -> None:
    """Date every file a few seconds back: Postfix programs sleep a second before reading a
    configuration or table file younger than a second (a guard against half-written files)."""
    past = time.time() - 10
    for path in directory.iterdir():
        os.utime(path, (past, past))


@pytest.fixture
def postfix_dir(tmp_path: Path) -> MakeDir:
    """A factory: write main.cf (BASE plus ``settings``), master.cf and table files."""
    if shutil.which("postconf") is None and not os.path.exists("/usr/sbin/postconf"):
        pytest.skip("Debian's postfix is not installed")

    def make(
        settings: Mapping[str, str] | None = None,
        tables: Mapping[str, str] | None = None,
        master_extra: str = "",
    ) -> Path:
        directory = tmp_path / "etc"
        directory.mkdir(exist_ok=True)
        main = {**BASE, **(settings or {})}
        for name, text in (tables or {}).items():
            (directory / name).write_text(text)
        main = {k: v.replace("@DIR@", str(directory)) for k, v in main.items()}
        (directory / "main.cf").write_text("".join(f"{k} = {v}\n" for k, v in main.items()))
        (directory / "master.cf").write_text(MASTER_CF + master_extra)
        settle(directory)
        return directory

    return make


def route_of(directory: Path, sender: str, recipient: str) -> tuple[str, str, str]:
    view = read_postfix_view(str(directory)).view
    route = resolve(view, sender, recipient)
    return route.address_class, route.transport, route.nexthop


# --- address classes ----------------------------------------------------------------------------


def test_every_address_class(postfix_dir: MakeDir) -> None:
    """mydestination → local, virtual_alias_domains → error, virtual_mailbox_domains → virtual,
    relay_domains → relay_transport, anything else → default_transport with relayhost."""
    directory = postfix_dir(
        {
            "relayhost": "[contoso-com.mail.protection.outlook.com]:25",
            "virtual_alias_domains": "alias.example",
            "virtual_mailbox_domains": "texthash:@DIR@/vmail_domains",
            "relay_domains": "relay.example",
        },
        {"vmail_domains": "vmail.example OK\n"},
    )
    view = read_postfix_view(str(directory)).view
    assert (resolve(view, "", "root@mta.contoso.com").address_class, "local") == ("local", "local")
    local = resolve(view, "a@contoso.com", "root@localhost")
    assert (local.address_class, local.transport, local.nexthop) == (
        "local",
        "local",
        "mta.contoso.com",  # local_transport = local:$myhostname names the next hop
    )
    alias = resolve(view, "a@contoso.com", "x@alias.example")
    assert (alias.address_class, alias.transport) == ("alias", "error")
    virtual = resolve(view, "a@contoso.com", "x@vmail.example")
    assert (virtual.address_class, virtual.transport, virtual.nexthop) == (
        "virtual",
        "virtual",
        "vmail.example",
    )
    relay = resolve(view, "a@contoso.com", "x@relay.example")
    assert (relay.address_class, relay.transport, relay.nexthop) == (
        "relay",
        "relay",
        "[contoso-com.mail.protection.outlook.com]:25",
    )
    default = resolve(view, "a@contoso.com", "kate@example.net")
    assert (default.address_class, default.transport, default.nexthop) == (
        "default",
        "smtp",
        "[contoso-com.mail.protection.outlook.com]:25",
    )
    assert default.relays and not local.relays and not alias.relays


def test_relay_domains_match_subdomains_by_parent_style(postfix_dir: MakeDir) -> None:
    """relay_domains matches subdomains exactly when parent_domain_matches_subdomains names it."""
    with_parent = postfix_dir(
        {"relay_domains": "relay.example", "parent_domain_matches_subdomains": "relay_domains"}
    )
    assert route_of(with_parent, "", "a@sub.relay.example")[0] == "relay"
    without = postfix_dir(
        {"relay_domains": "relay.example", "parent_domain_matches_subdomains": ""}
    )
    assert route_of(without, "", "a@sub.relay.example")[0] == "default"
    dotted = postfix_dir(
        {"relay_domains": ".relay.example", "parent_domain_matches_subdomains": ""}
    )
    assert route_of(dotted, "", "a@sub.relay.example")[0] == "relay"
    assert route_of(dotted, "", "a@relay.example")[0] == "default"


def test_empty_relayhost_means_the_recipient_domain(postfix_dir: MakeDir) -> None:
    """Without relayhost, the next hop of the default class is the recipient domain."""
    directory = postfix_dir({"relayhost": ""})
    assert route_of(directory, "a@contoso.com", "kate@Example.NET") == (
        "default",
        "smtp",
        "example.net",
    )


# --- transport_maps, step by step --------------------------------------------------------------

TRANSPORT = """\
kate@example.net        relay-m365:[kate-relay.example]:2525
user@ext.example        relay-m365:[ext-relay.example]
ext.example             smtp:[domain-relay.example]
.parent.example         smtp:[parent-relay.example]
keep-transport.example  :[other-hop.example]:26
keep-nexthop.example    relay-m365
keep-all.example        :
*                       relay:[wildcard.example]
"""


def postmap(table: Path) -> None:
    """Build a hash: table from its source file, as an administrator does."""
    subprocess.run([POSTMAP, f"hash:{table}"], check=True, timeout=30)
    settle(table.parent)


@pytest.fixture
def transport_dir(postfix_dir: MakeDir) -> Path:
    """relayhost to Microsoft 365 and a hash: transport_maps with one entry per lookup step."""
    directory = postfix_dir(
        {
            "relayhost": "[contoso-com.mail.protection.outlook.com]:25",
            "transport_maps": "hash:@DIR@/transport",
            "recipient_delimiter": "+",
        },
        {"transport": TRANSPORT},
    )
    postmap(directory / "transport")
    return directory


@pytest.mark.parametrize(
    ("recipient", "expected"),
    [
        pytest.param(
            "kate@example.net", ("relay-m365", "[kate-relay.example]:2525"), id="full-address"
        ),
        pytest.param(
            "user+tag@ext.example", ("relay-m365", "[ext-relay.example]"), id="address-sans-ext"
        ),
        pytest.param("other@ext.example", ("smtp", "[domain-relay.example]"), id="domain"),
        pytest.param(
            "x@a.b.parent.example", ("smtp", "[parent-relay.example]"), id="dot-parent-entry"
        ),
        pytest.param("x@parent.example", ("relay", "[wildcard.example]"), id="parent-not-itself"),
        pytest.param(
            "x@keep-transport.example",
            ("smtp", "[other-hop.example]:26"),
            id="empty-transport-inherits",
        ),
        pytest.param(
            "x@keep-nexthop.example",
            ("relay-m365", "keep-nexthop.example"),
            id="no-nexthop-resets-to-domain",
        ),
        pytest.param(
            "x@keep-all.example",
            ("smtp", "[contoso-com.mail.protection.outlook.com]:25"),
            id="colon-alone-is-a-noop",
        ),
        pytest.param("x@elsewhere.example", ("relay", "[wildcard.example]"), id="wildcard"),
    ],
)
def test_transport_maps_lookup_order(
    transport_dir: Path, recipient: str, expected: tuple[str, str]
) -> None:
    """transport_maps: full address, address without extension, domain, .parent, then *."""
    assert route_of(transport_dir, "a@contoso.com", recipient)[1:] == expected


def test_bare_parent_entries_with_parent_style(postfix_dir: MakeDir) -> None:
    """With transport_maps in parent_domain_matches_subdomains, a bare parent matches."""
    directory = postfix_dir(
        {
            "transport_maps": "texthash:@DIR@/transport",
            "parent_domain_matches_subdomains": "transport_maps",
        },
        {"transport": "parent.example smtp:[p.example]\n"},
    )
    assert route_of(directory, "", "x@sub.parent.example")[1:] == ("smtp", "[p.example]")


def test_transport_maps_is_case_insensitive(postfix_dir: MakeDir) -> None:
    """Keys of fixed tables are folded to lower case, as Postfix folds them."""
    directory = postfix_dir(
        {"transport_maps": "texthash:@DIR@/transport"},
        {"transport": "example.net smtp:[lower.example]\n"},
    )
    assert route_of(directory, "", "Kate@EXAMPLE.net")[1:] == ("smtp", "[lower.example]")


def test_regexp_transport_maps_see_only_the_full_address(postfix_dir: MakeDir) -> None:
    """Pattern tables get the full address (and *), never a derived domain key."""
    directory = postfix_dir(
        {"transport_maps": "regexp:@DIR@/transport.re"},
        {"transport.re": "/^kate@/ smtp:[kate.example]\n/^example\\.net$/ smtp:[domain.example]\n"},
    )
    assert route_of(directory, "", "kate@example.net")[1:] == ("smtp", "[kate.example]")
    assert route_of(directory, "", "john@example.net")[1:] == ("smtp", "example.net")


# --- sender-dependent maps ---------------------------------------------------------------------


def test_sender_dependent_relayhost(postfix_dir: MakeDir) -> None:
    """sender_dependent_relayhost_maps: full sender, @domain, and the null sender's <> key;
    it beats relayhost, and an explicit transport_maps next hop beats it."""
    directory = postfix_dir(
        {
            "relayhost": "",
            "sender_dependent_relayhost_maps": "texthash:@DIR@/sender_relay",
            "transport_maps": "texthash:@DIR@/transport",
        },
        {
            "sender_relay": (
                "@contoso.com [contoso-com.mail.protection.outlook.com]:25\n"
                "@fabrikam.example [fabrikam-example.mail.protection.outlook.com]:25\n"
                "boss@fabrikam.example [boss.example]\n"
                "<> [bounces.example]\n"
            ),
            "transport": "partner.example smtp:[mx.partner.example]\n",
        },
    )
    assert route_of(directory, "alerts@contoso.com", "u@example.net")[2] == (
        "[contoso-com.mail.protection.outlook.com]:25"
    )
    assert route_of(directory, "helpdesk@fabrikam.example", "u@example.net")[2] == (
        "[fabrikam-example.mail.protection.outlook.com]:25"
    )
    assert route_of(directory, "boss@fabrikam.example", "u@example.net")[2] == "[boss.example]"
    assert route_of(directory, "", "u@example.net")[2] == "[bounces.example]"
    assert route_of(directory, "x@unlisted.example", "u@example.net")[2] == "example.net"
    assert route_of(directory, "alerts@contoso.com", "u@partner.example")[2] == (
        "[mx.partner.example]"
    )


def test_sender_dependent_default_transport(postfix_dir: MakeDir) -> None:
    """sender_dependent_default_transport_maps picks the default class's transport; DUNNO
    falls back to default_transport; a transport:nexthop value names the next hop too."""
    directory = postfix_dir(
        {
            "relayhost": "[contoso-com.mail.protection.outlook.com]:25",
            "sender_dependent_default_transport_maps": "texthash:@DIR@/sender_transport",
        },
        {
            "sender_transport": (
                "@fabrikam.example relay-m365\n"
                "@adatum.example relay-m365:[adatum-example.mail.protection.outlook.com]\n"
                "@dunno.example DUNNO\n"
            )
        },
    )
    assert route_of(directory, "a@fabrikam.example", "u@example.net")[1:] == (
        "relay-m365",
        "[contoso-com.mail.protection.outlook.com]:25",
    )
    assert route_of(directory, "a@adatum.example", "u@example.net")[1:] == (
        "relay-m365",
        "[adatum-example.mail.protection.outlook.com]",
    )
    assert route_of(directory, "a@dunno.example", "u@example.net")[1] == "smtp"


# --- what the delivering service presents ------------------------------------------------------


def test_master_cf_overrides_decide_the_certificate_and_egress(postfix_dir: MakeDir) -> None:
    """A service's -o overrides win over main.cf; each value says where it came from."""
    directory = postfix_dir(
        {
            "smtp_tls_security_level": "may",
            "smtp_tls_cert_file": "/etc/ssl/main.pem",
            "smtp_bind_address": "198.51.100.7",
        }
    )
    view = read_postfix_view(str(directory)).view
    special = client_tls(view, "relay-m365")
    assert special.certificate_files == ("/etc/ssl/relay-m365.pem",)
    assert special.certificate_from == "master.cf: relay-m365/unix -o smtp_tls_chain_files"
    assert (special.bind_address, special.level) == ("203.0.113.10", "encrypt")
    plain = client_tls(view, "smtp")
    assert plain.certificate_files == ("/etc/ssl/main.pem",)
    assert plain.certificate_from == "main.cf: smtp_tls_cert_file"
    assert (plain.bind_address, plain.bind_from) == ("198.51.100.7", "main.cf: smtp_bind_address")
    assert plain.presents_certificate


def test_no_certificate_is_presented_without_tls_or_files(postfix_dir: MakeDir) -> None:
    """TLS level may without any client certificate file, or level none, presents nothing."""
    appliance = postfix_dir({"smtp_tls_security_level": "may"})
    tls = client_tls(read_postfix_view(str(appliance)).view, "smtp")
    assert not tls.presents_certificate
    assert tls.not_presented_because.startswith("not presented by Postfix")
    off = postfix_dir({"smtp_tls_security_level": "none", "smtp_tls_cert_file": "/x.pem"})
    tls = client_tls(read_postfix_view(str(off)).view, "smtp")
    assert not tls.presents_certificate
    assert "does not use TLS" in tls.not_presented_because


# --- failures -----------------------------------------------------------------------------------


def test_a_missing_table_is_a_configuration_error(postfix_dir: MakeDir) -> None:
    """A transport table that does not exist stops the load with file, parameter and fix."""
    directory = postfix_dir({"transport_maps": "hash:@DIR@/transport"})
    with pytest.raises(ConfigError) as caught:
        read_postfix_view(str(directory))
    assert "main.cf: transport_maps" in str(caught.value)
    assert "postmap" in str(caught.value)


def test_a_failing_lookup_raises_route_lookup_error(postfix_dir: MakeDir) -> None:
    """A table that fails at lookup time raises RouteLookupError (the engine answers on_error)."""
    directory = postfix_dir(
        {"transport_maps": "hash:@DIR@/transport"}, {"transport": "a.example smtp:\n"}
    )
    postmap(directory / "transport")
    loaded = read_postfix_view(str(directory))
    (directory / "transport.db").write_bytes(b"this is not a Berkeley DB file")
    with pytest.raises(RouteLookupError):
        resolve(loaded.view, "", "x@b.example")


def test_not_a_postfix_directory(tmp_path: Path) -> None:
    """A directory without main.cf is a configuration error naming the key."""
    with pytest.raises(ConfigError) as caught:
        read_postfix_view(str(tmp_path))
    assert "postfix.config_directory" in str(caught.value)


def test_watched_files_include_tables(transport_dir: Path) -> None:
    """main.cf, master.cf and every table file routing reads are watched for reloads."""
    files = read_postfix_view(str(transport_dir)).files
    assert str(transport_dir / "main.cf") in files
    assert str(transport_dir / "master.cf") in files
    assert str(transport_dir / "transport.db") in files


# --- endpoints -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("nexthop", "kind"),
    [
        ("[contoso-com.mail.protection.outlook.com]:25", endpoints.RELAY),
        ("[contoso-com.a-v1.mx.microsoft]:25", endpoints.RELAY),
        ("contoso-com.mail.protection.office365.us", endpoints.RELAY),
        ("[contoso-com.mail.protection.partner.outlook.cn]", endpoints.RELAY),
        ("[mail.messaging.microsoft.com]", endpoints.LEGACY),
        ("mail.global.frontbridge.com:25", endpoints.LEGACY),
        ("[smtp.office365.com]:587", endpoints.SUBMISSION),
        ("[mx.partner.example]", endpoints.OTHER),
        ("mail.protection.outlook.com.evil.example", endpoints.OTHER),
        ("", endpoints.OTHER),
    ],
)
def test_microsoft_365_endpoints(nexthop: str, kind: str) -> None:
    """Relay, legacy (ATTR35), submission and other next hops are told apart by name."""
    assert endpoints.classify_nexthop(nexthop) == kind


def test_tenant_endpoint_globs_count_as_relay() -> None:
    """A tenant's endpoints globs make a host a relay endpoint too."""
    assert endpoints.classify_host("relay.contoso.example", ["*.contoso.example"]) == "relay"
