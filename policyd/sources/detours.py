"""Content-filter detours: where Postfix hands mail to a filter before it is routed.

``content_filter`` (main.cf, or a master.cf ``-o`` of a listener such as ``smtpd`` or
``pickup``) and ``FILTER`` actions in access and header/body check tables send a message to
a filter transport first (cleanup(8), FILTER_README); the route the daemon predicts is the one
the message takes after the filter gives it back. These detours are reported by ``check`` and
doctor, never followed: a filter that re-injects with ``sendmail`` hands the message to
pickup(8), which never asks a policy service, so what the filter changes is not predicted.

``FILTER`` actions are found by reading the tables' source files (``regexp:``, ``pcre:``,
``texthash:``, and the source next to an indexed ``hash:``/``lmdb:``/``cdb:`` file); tables
of other types are not read and are not reported.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass

from policyd.rules.routing import Service, split_list
from policyd.sources.files import MAX_TABLE_SOURCE_BYTES, read_capped

#: Tables whose actions may say FILTER (header_checks(5), access(5)).
CHECK_PARAMETERS = ("header_checks", "mime_header_checks", "nested_header_checks", "body_checks")
#: Restriction lists whose check_*_access tables may say FILTER.
RESTRICTION_PARAMETERS = (
    "smtpd_client_restrictions",
    "smtpd_helo_restrictions",
    "smtpd_sender_restrictions",
    "smtpd_relay_restrictions",
    "smtpd_recipient_restrictions",
    "smtpd_data_restrictions",
    "smtpd_end_of_data_restrictions",
)
_READABLE = ("regexp", "pcre", "texthash", "hash", "btree", "lmdb", "cdb")
_FILTER_ACTION = re.compile(r"(?i)(?:^|\s)FILTER\s+(\S+)")


@dataclass(frozen=True, slots=True)
class Detour:
    """One place that sends mail to a content filter before it is routed."""

    where: str  # "main.cf: content_filter", "master.cf: smtp/inet -o content_filter", a table
    target: str  # the filter's transport:nexthop
    #: What the filter transport is, e.g. "pipe: /usr/sbin/sendmail ..." ("" when unknown).
    filter_service: str = ""

    @property
    def reinjects_with_sendmail(self) -> bool:
        return "sendmail" in self.filter_service

    def __str__(self) -> str:
        text = f"{self.where} = {self.target}"
        if self.reinjects_with_sendmail:
            text += (
                " (a pipe filter that re-injects with sendmail: pickup(8) never asks the policy "
                "service, so what the filter changes is not predicted)"
            )
        return text


def find_detours(
    parameters: Mapping[str, str],
    fields: Mapping[str, str],
    overrides: Mapping[str, str],
    services: Mapping[str, Service],
) -> tuple[Detour, ...]:
    """The detours of one instance from ``postconf -x`` (``parameters``), ``-Fx``
    (``fields``, for filter commands) and ``-Px`` (``overrides``, every service type)."""
    found: list[tuple[str, str]] = []
    if parameters.get("content_filter", "").strip():
        found.append(("main.cf: content_filter", parameters["content_filter"].strip()))
    for key, value in overrides.items():
        name, _, parameter = key.rpartition("/")
        if parameter == "content_filter" and value.strip():
            found.append((f"master.cf: {name} -o content_filter", value.strip()))
    for spec, where in _check_tables(parameters):
        for line, target in _filter_actions(spec):
            found.append((f"{where} ({spec} line {line}): FILTER", target))
    return tuple(
        Detour(where, target, _filter_command(target, fields, services))
        for where, target in dict.fromkeys(found)
    )


def _check_tables(parameters: Mapping[str, str]) -> list[tuple[str, str]]:
    tables: list[tuple[str, str]] = []
    for parameter in CHECK_PARAMETERS:
        tables.extend(
            (spec, f"main.cf: {parameter}") for spec in split_list(parameters.get(parameter, ""))
        )
    for parameter in RESTRICTION_PARAMETERS:
        words = split_list(parameters.get(parameter, ""))
        for index, word in enumerate(words[:-1]):
            if word.lower().startswith("check_") and word.lower().endswith("_access"):
                tables.append((words[index + 1], f"main.cf: {parameter} {word}"))
    return tables


def _filter_actions(spec: str) -> list[tuple[int, str]]:
    """(line number, FILTER target) in the source file of table ``spec``; [] when unread."""
    kind, colon, name = spec.partition(":")
    if not colon or kind.lower() not in _READABLE:
        return []
    path = name
    if kind.lower() in ("btree", "lmdb", "cdb", "hash") and not os.path.isfile(path):
        return []
    try:
        text = read_capped(path, MAX_TABLE_SOURCE_BYTES).decode("utf-8", "replace")
    except OSError:
        return []
    actions: list[tuple[int, str]] = []
    for number, line in enumerate(text.splitlines(), 1):
        if line.lstrip().startswith("#"):
            continue
        match = _FILTER_ACTION.search(line)
        if match is not None:
            actions.append((number, match.group(1)))
    return actions


def _filter_command(target: str, fields: Mapping[str, str], services: Mapping[str, Service]) -> str:
    """ "COMMAND ARGS" of the master.cf unix service ``target`` names, "" when there is none."""
    name = target.partition(":")[0]
    if name not in services:
        return ""
    return fields.get(f"{name}/unix/command", services[name].command).strip()
