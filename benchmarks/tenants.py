"""SPEC §9's tenants and routing rows, for ``benchmarks/run.py``.

- ``tenants``: 1,000 tenants, one ``include``d file each, load (configuration, exports, state)
  in a fresh process: target ≤ 2 s and ≤ 150 MB RSS.
- ``routing``: throughput with ``[postfix]`` routing (a private Postfix configuration directory
  read with the real ``postconf``), three tenants chosen by ``sender_dependent_relayhost_maps``,
  and a 10,000-entry ``transport_maps`` in memory (texthash), against the bare responder in
  alternating runs of the same generator: target ≥ 0.8 x.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path
from typing import Any

from benchmarks.common import (
    RUN,
    Row,
    Server,
    alternate,
    free_port,
    fresh_process_json,
    rate_ratio,
    serve,
    servers,
    start_bare,
    versus,
)

LOAD_TIMER = """
import json, resource, sys, time
began = time.perf_counter()
from policyd.sources.state import load_state
state = load_state(sys.argv[1], 0)
took = time.perf_counter() - began
rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps({"seconds": took, "rss_mb": rss, "tenants": len(state.predictor.tenants)}))
"""


def write_tenants(directory: Path, count: int) -> Path:
    """``count`` tenants, one file each under ``tenants.d``; the main configuration's path."""
    tenants = directory / "tenants.d"
    tenants.mkdir(parents=True, exist_ok=True)
    for number in range(count):
        name = f"t{number:04d}"
        (tenants / f"{name}.toml").write_text(
            f"[tenants.{name}]\n"
            f'sender_domains = ["d{number}.example"]\n'
            f'accepted_domains = ["d{number}.example"]\n'
            f"[[tenants.{name}.inbound_connector]]\n"
            'name = "From on-premises"\n'
            'sender_ip_addresses = ["203.0.113.10/32"]\n'
        )
    config = directory / "many.toml"
    config.write_text(
        'include = ["tenants.d/*.toml"]\n[onprem]\negress_addresses = ["203.0.113.10"]\n'
    )
    return config


def row_tenants(report: Any, workdir: Path, scale: Any) -> None:
    """1,000 tenants in 1,000 included files: load time and peak RSS (worst of 3)."""
    config = write_tenants(workdir / "tenants", 1000)
    results = [fresh_process_json("tenant load", LOAD_TIMER, str(config)) for _ in range(3)]
    seconds = max(r["seconds"] for r in results)
    rss = max(r["rss_mb"] for r in results)
    assert all(r["tenants"] == 1000 for r in results)
    report.add(
        Row(
            "1,000 tenants in 1,000 included files: load time and peak RSS of a fresh process",
            "≤ 2 s, ≤ 150 MB",
            f"{seconds:.2f} s, {rss:.0f} MB (worst of 3; imports included)",
            seconds <= 2.0 and rss <= 150,
            f"`{RUN} tenants`",
        )
    )


MAIN_CF = """\
compatibility_level = 3.6
myhostname = mta.contoso.com
mydomain = contoso.com
mydestination = $myhostname, localhost
relayhost = [contoso-com.mail.protection.outlook.com]:25
sender_dependent_relayhost_maps = texthash:{etc}/sender_relay
transport_maps = texthash:{etc}/transport
smtp_bind_address = 203.0.113.10
smtp_tls_security_level = may
"""
MASTER_CF = "smtp unix - - n - - smtp\nlocal unix - n n - - local\n"


def write_postfix(etc: Path, transport_entries: int) -> None:
    """A Postfix configuration directory: three tenants' endpoints, a big transport_maps."""
    etc.mkdir(parents=True, exist_ok=True)
    (etc / "main.cf").write_text(MAIN_CF.format(etc=etc))
    (etc / "master.cf").write_text(MASTER_CF)
    (etc / "sender_relay").write_text(
        "@fabrikam.com [fabrikam-com.mail.protection.outlook.com]:25\n"
        "@adatum.com [adatum-com.mail.protection.outlook.com]:25\n"
    )
    with (etc / "transport").open("w") as out:
        for number in range(transport_entries):
            out.write(f"partner{number}.example smtp:[mx{number}.partner.example]\n")
    past = time.time() - 10  # Postfix programs wait for files younger than a second
    for path in etc.iterdir():
        os.utime(path, (past, past))


def routing_config(port: int, etc: Path) -> str:
    tenants = []
    for name, domain in (
        ("contoso", "contoso.com"),
        ("fabrikam", "fabrikam.com"),
        ("adatum", "adatum.com"),
    ):
        endpoint = domain.replace(".", "-") + ".mail.protection.outlook.com"
        tenants.append(
            f"[tenants.{name}]\n"
            f'endpoints = ["{endpoint}"]\n'
            f'accepted_domains = ["{domain}"]\n'
            f"[[tenants.{name}.inbound_connector]]\n"
            'name = "From on-premises"\n'
            'sender_ip_addresses = ["203.0.113.10/32"]\n'
        )
    return (
        f'[server]\nlisten = ["tcp:{port}:interface=127.0.0.1"]\n'
        f'metrics = "tcp:{free_port()}:interface=127.0.0.1"\n'
        f'[postfix]\nconfig_directory = "{etc}"\n'
        '[policy]\naction = "defer"\ntag = true\n'
        '[log]\nformat = "text"\nlevel = "info"\n' + "".join(tenants)
    )


def start_routing_daemon(workdir: Path) -> Server:
    etc = workdir / "postfix"
    write_postfix(etc, 10_000)
    port = free_port()
    config = workdir / "routing.toml"
    config.write_text(routing_config(port, etc))
    return serve("daemon (routing, three tenants)", config, port, workdir / "routing.log")


def row_routing(report: Any, workdir: Path, scale: Any) -> None:
    """Throughput with [postfix] routing, three tenants, a 10,000-entry transport_maps."""
    if shutil.which("postconf") is None and not os.path.exists("/usr/sbin/postconf"):
        report.note("routing", "not measured: Debian's postfix (postconf) is not installed")
        return
    with servers(lambda: start_bare(workdir), lambda: start_routing_daemon(workdir)) as (
        bare,
        daemon,
    ):
        runs = alternate(report, "routing", [bare, daemon], scale)
    ratio = rate_ratio(runs[daemon.name], runs[bare.name])
    report.add(
        Row(
            "throughput with `[postfix]` routing, three tenants and a 10,000-entry "
            "`transport_maps`, 50 connections",
            "≥ 0.8 × bare",
            versus(runs[daemon.name], runs[bare.name], scale),
            ratio >= 0.8,
            f"`{RUN} routing`",
        )
    )
