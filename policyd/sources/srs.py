"""The domain postsrsd really writes into rewritten senders (``SRS0=…@domain``).

With ``[postfix]``, when ``sender_canonical_maps`` (or ``recipient_canonical_maps``) asks
postsrsd — a ``tcp:`` map on postsrsd 1.x's forward port (10001 by default) or a
``socketmap:…:forward`` map of postsrsd 2.x — the SRS domain is read from postsrsd's own
configuration instead of ``onprem.srs_domain``:

- postsrsd 1.x (Debian 12 ships 1.10): ``/etc/default/postsrsd``, a shell fragment sourced by
  Debian's launcher; ``SRS_DOMAIN`` unset means the launcher's default, ``postconf -h mydomain``.
- postsrsd 2.x: ``/etc/postsrsd.conf`` (libconfuse): ``srs-domain``, else the first of
  ``domains``.

A value the configuration writes literally (``SRS_DOMAIN='$myhostname'``, a ``$name`` the
launcher never defines) is what postsrsd puts in the address: Microsoft 365 refuses such a
sender at MAIL FROM (``501 5.1.7 Invalid address``, roehling/postsrsd#192). ``SrsDomain.problem``
says so for doctor, and predictions keep the literal, so the rewrite is not assumed to help.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace

from policyd.rules.model import normalize_domain
from policyd.rules.routing import split_list
from policyd.sources.files import MAX_CONFIG_BYTES, read_capped

#: Where postsrsd's configuration usually lives, in the order we look.
POSTSRSD_CONFIGS = ("/etc/default/postsrsd", "/etc/postsrsd.conf", "/etc/postsrsd/postsrsd.conf")
#: postsrsd 1.x's default forward port; a tcp: map on it is postsrsd.
POSTSRSD_FORWARD_PORT = "10001"

_DOMAIN = re.compile(r"^(?=.{1,253}$)([a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9])?\.)*[a-z0-9-]{1,63}$")


@dataclass(frozen=True, slots=True)
class SrsDomain:
    """The SRS domain postsrsd writes, where it came from, and what is wrong with it."""

    domain: str  # normalised when valid; the literal text otherwise
    source: str  # e.g. "/etc/default/postsrsd: SRS_DOMAIN"
    table: str  # the canonical map that asks postsrsd
    problem: str = ""  # non-empty: Microsoft 365 refuses senders in this domain
    file: str = ""  # the postsrsd configuration file read ("" when postsrsd's default applied)


def postsrsd_table(parameters: Mapping[str, str]) -> tuple[str, str]:
    """(parameter, table) of the canonical map that asks postsrsd, or ("", "")."""
    for parameter in ("sender_canonical_maps", "recipient_canonical_maps", "canonical_maps"):
        for table in split_list(parameters.get(parameter, "")):
            lowered = table.lower()
            if "postsrsd" in lowered or lowered.endswith(":forward"):
                return parameter, table
            if lowered.startswith("tcp:") and lowered.rsplit(":", 1)[-1] == POSTSRSD_FORWARD_PORT:
                return parameter, table
    return "", ""


def read_srs_domain(
    parameters: Mapping[str, str], config_path: str = "", candidates: Sequence[str] = ()
) -> SrsDomain | None:
    """The SRS domain when Postfix asks postsrsd, else None.

    ``config_path`` is ``[postfix] postsrsd_config`` ("" = look in ``candidates``, by default
    ``POSTSRSD_CONFIGS``). Reads only regular files under ``MAX_CONFIG_BYTES``.
    """
    parameter, table = postsrsd_table(parameters)
    if not table:
        return None
    where = f"main.cf: {parameter} = {table}"
    paths = [config_path] if config_path else list(candidates or POSTSRSD_CONFIGS)
    for path in paths:
        text = _read(path)
        if text is None:
            continue
        if path.endswith(".conf"):
            found = _libconfuse_domain(text)
            if found is not None:
                return replace(_judged(found[0], f"{path}: {found[1]}", where), file=path)
            continue
        found_shell = _shell_domain(text, parameters)
        if found_shell is not None:
            return replace(_judged(found_shell, f"{path}: SRS_DOMAIN", where), file=path)
        # A 1.x defaults file without SRS_DOMAIN: the launcher's default applies.
        mydomain = parameters.get("mydomain", "").strip()
        return replace(
            _judged(mydomain, f"{path} sets no SRS_DOMAIN: postconf -h mydomain", where),
            file=path,
        )
    mydomain = parameters.get("mydomain", "").strip()
    return _judged(mydomain, "postsrsd's default: postconf -h mydomain", where)


def _read(path: str) -> str | None:
    try:
        return read_capped(path, MAX_CONFIG_BYTES).decode("utf-8", errors="replace")
    except OSError:
        return None


def _shell_domain(text: str, parameters: Mapping[str, str]) -> str | None:
    """``SRS_DOMAIN=...`` of a sourced shell fragment (the last assignment), as sh sees it.

    Single quotes keep ``$name`` literal (postsrsd then writes it as is); unquoted or
    double-quoted, ``$(postconf -h NAME)`` and its backquoted form are Postfix's parameter, and
    any other ``$name`` is a variable the launcher does not define: it expands to nothing.
    """
    value: str | None = None
    for line in text.splitlines():
        stripped = line.strip()
        if not stripped.startswith("SRS_DOMAIN="):
            continue
        raw = stripped[len("SRS_DOMAIN=") :].strip()
        if raw.startswith("'"):
            value = raw[1:].partition("'")[0]
            continue
        raw = raw.split(" #", 1)[0].strip().strip('"')
        postconf = re.fullmatch(r"(?:\$\(|`)\s*postconf\s+-h\s+(\w+)[^)`]*(?:\)|`)", raw)
        if postconf:
            value = parameters.get(postconf.group(1), "").strip()
        else:
            value = re.sub(r"\$\{?\w+\}?", "", raw)
    return value


def _libconfuse_domain(text: str) -> tuple[str, str] | None:
    """postsrsd 2.x: ``srs-domain = "x"``, else the first of ``domains = {"a", "b"}``."""
    srs = re.search(r'^\s*srs-domain\s*=\s*"?([^"\n#]*)"?', text, re.MULTILINE)
    if srs and srs.group(1).strip():
        return srs.group(1).strip(), "srs-domain"
    domains = re.search(r"^\s*domains\s*=\s*\{([^}]*)\}", text, re.MULTILINE)
    if domains:
        first = next((d.strip(' "') for d in domains.group(1).split(",") if d.strip(' "')), "")
        if first:
            return first, "domains (the first, as srs-domain is unset)"
    return None


def _judged(value: str, source: str, table: str) -> SrsDomain:
    text = value.strip()
    if not text:
        return SrsDomain(
            "",
            source,
            table,
            "is empty, so postsrsd has no domain to write (Debian's launcher then exits)",
        )
    domain = normalize_domain(text)
    if _DOMAIN.match(domain) and "." in domain:
        return SrsDomain(domain, source, table)
    return SrsDomain(
        text,
        source,
        table,
        f"{text!r} is not a domain: postsrsd writes it literally (SRS0=…@{text}), and Microsoft "
        "365 refuses such a sender with 501 5.1.7 Invalid address",
    )
