"""The metric names the daemon exports, for the dashboard and alert-rule tests.

``SPEC_METRICS`` is the list of SPEC §7 and §8 as Prometheus sees them (histogram series by their
``_bucket``/``_sum``/``_count`` names); ``metric_names`` finds the names a PromQL text uses.
"""

from __future__ import annotations

import re

#: Metric names the daemon exports (SPEC §7 and §8), as Prometheus sees them.
SPEC_METRICS = frozenset(
    {
        "m365_policyd_requests_total",
        "m365_policyd_request_duration_seconds_bucket",
        "m365_policyd_request_duration_seconds_sum",
        "m365_policyd_request_duration_seconds_count",
        "m365_policyd_predictions_total",
        "m365_policyd_actions_total",
        "m365_policyd_connections",
        "m365_policyd_protocol_errors_total",
        "m365_policyd_internal_errors_total",
        "m365_policyd_log_lines_dropped_total",
        "m365_policyd_external_recipients_total",
        "m365_policyd_unregistered_sender_relays_total",
        "m365_policyd_certificate_not_after_timestamp_seconds",
        "m365_policyd_certificate_connector_match",
        "m365_policyd_config_reloads_total",
        "m365_policyd_config_last_reload_success_timestamp_seconds",
        "m365_policyd_build_info",
        "m365_policyd_observed_replies_total",
        "m365_policyd_prediction_outcomes_total",
        "m365_policyd_metrics_connections_closed_total",
    }
)


def metric_names(text: str) -> set[str]:
    """The ``m365_policyd_*`` metric names used in PromQL text (not recording-rule names)."""
    return set(re.findall(r"(?<![\w:])m365_policyd_[a-z0-9_]+(?![\w:])", text))
