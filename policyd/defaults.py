"""Every user-visible default of m365-policyd, in one place (SPEC §4).

``policyd.sources.config`` fills each key a configuration file leaves out from here, the example
configuration in ``contrib/`` spells the same values, and the command line names the default
configuration path from here. Change a default here and nowhere else.
"""

from __future__ import annotations

# Where the configuration lives (SPEC §3): ``-c`` wins, then the environment, then the path.
CONFIG_ENV = "M365_POLICYD_CONFIG"
CONFIG_PATH = "/etc/m365-policyd/m365-policyd.toml"
#: Shipped example, named in the "no configuration file" message.
EXAMPLE_CONFIG = "contrib/m365-policyd.example.toml"

# [server]
LISTEN: tuple[str, ...] = ("tcp:10040:interface=127.0.0.1",)
METRICS = "tcp:9464:interface=127.0.0.1"  # "" turns the HTTP /metrics endpoint off
IDLE_TIMEOUT = 3600.0  # seconds; longer than Postfix's smtpd_policy_service_max_idle (300s)
MAX_CONNECTIONS = 4096
MAX_REQUEST_BYTES = 65536
RELOAD_INTERVAL = 30.0  # seconds; 0 = reload only on SIGHUP

# [tenant]
ACCEPTED_DOMAINS: tuple[str, ...] = ()
ACCEPTED_DOMAINS_FILE = ""
INBOUND_CONNECTORS_FILE = ""
REJECT_DIRECT_SEND = False
# [[tenant.inbound_connector]]
CONNECTOR_TYPE = "OnPremises"
CONNECTOR_ENABLED = True

# [onprem]
EGRESS_ADDRESSES: tuple[str, ...] = ()
CERTIFICATE = ""  # no certificate: only the IP path can attribute the connection
CA_BUNDLE = ""  # "" = the system's trusted roots decide whether the chain is complete
SRS_DOMAIN = ""
LOCAL_DOMAINS: tuple[str, ...] = ()
ALIAS_MAPS: tuple[str, ...] = ()
RECIPIENT_DELIMITER = ""  # Postfix's recipient_delimiter (Debian's main.cf sets "+")

# [policy]
ACTION = "dunno"
REROUTE = ""
TAG = True
HEADER = "X-M365-Relay"
ON_ERROR = "dunno"

# [log]
LOG_FORMAT = "text"
LOG_LEVEL = "info"

# [outcomes]
POSTFIX_LOG = ""  # "" = do not follow Postfix's log
