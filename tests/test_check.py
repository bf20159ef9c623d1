"""``m365-policyd check`` and the command line's exit codes (SPEC §3)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from policyd import __version__
from policyd.tools import cli

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = str(ROOT / "contrib" / "m365-policyd.example.toml")


def run(*args: str, capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = cli.main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def with_aliases(directory: Path, table: str) -> str:
    """The example configuration with ``table`` as its texthash alias map; returns its path."""
    (directory / "virtual").write_text(table)
    config = directory / "m365-policyd.toml"
    example = Path(EXAMPLE).read_text()
    assert "alias_maps = []" in example
    config.write_text(example.replace("alias_maps = []", 'alias_maps = ["texthash:virtual"]'))
    return str(config)


def test_example_predicts_a_5764_refusal(capsys: pytest.CaptureFixture[str]) -> None:
    """The README example: a fabrikam sender to an outside recipient is refused, exit 1."""
    code, out, _ = run(
        "check",
        "-c",
        EXAMPLE,
        "--sender",
        "john@fabrikam.com",
        "--recipient",
        "kate@tailspintoys.com",
        capsys=capsys,
    )
    assert code == 1
    assert "550 5.7.64 Relay Access Denied ATTR36" in out
    assert "[sender-not-accepted]" in out
    assert "fabrikam.com is not an accepted domain" in out
    assert "Verdict   reject (1 of 1 recipients refused)" in out


def test_own_domain_passes(capsys: pytest.CaptureFixture[str]) -> None:
    """An accepted sender domain through the IP connector passes, exit 0."""
    code, out, _ = run(
        "check",
        "-c",
        EXAMPLE,
        "--sender",
        "alerts@contoso.com",
        "--recipient",
        "kate@tailspintoys.com",
        capsys=capsys,
    )
    assert code == 0
    assert "[sender-accepted-domain]" in out


def test_json_shape(capsys: pytest.CaptureFixture[str]) -> None:
    """--json prints one object with the fields SPEC §3 names, for every recipient."""
    code, out, _ = run(
        "check",
        "-c",
        EXAMPLE,
        "--sender",
        "",
        "--recipient",
        "kate@tailspintoys.com",
        "--recipient",
        "bob@contoso.com",
        "--json",
        capsys=capsys,
    )
    assert code == 1
    document = json.loads(out)
    assert document["verdict"] == "reject"
    first, second = document["recipients"]
    assert set(first) >= {
        "recipient",
        "final",
        "verdict",
        "code",
        "reply",
        "reason",
        "explanation",
    }
    assert first["recipient"] == "kate@tailspintoys.com"
    assert first["final"] == ["kate@tailspintoys.com"]
    assert (first["verdict"], first["code"], first["reason"]) == (
        "reject",
        "5.7.64",
        "null-sender",
    )
    assert first["reply"] == "550 5.7.64 Relay Access Denied ATTR36"
    assert (second["verdict"], second["code"], second["reply"], second["reason"]) == (
        "accept",
        None,
        None,
        "recipient-in-tenant",
    )


def test_forward_is_shown_with_its_final_address(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A recipient forwarded through alias_maps shows the final address and reason forwarded."""
    config = with_aliases(tmp_path, "kate@contoso.com kate@tailspintoys.com\n")
    code, out, _ = run(
        "check",
        "-c",
        config,
        "--sender",
        "john@fabrikam.com",
        "--recipient",
        "kate@contoso.com",
        "--json",
        capsys=capsys,
    )
    assert code == 1
    (recipient,) = json.loads(out)["recipients"]
    assert recipient["final"] == ["kate@tailspintoys.com"]
    assert recipient["reason"] == "forwarded"
    assert recipient["addresses"][0]["forwarded"] is True


def test_alias_loop_is_reported_not_guessed(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """An alias loop that Postfix would defer is reported as an error, exit 1."""
    config = with_aliases(tmp_path, "a@contoso.com b@contoso.com\nb@contoso.com a@contoso.com\n")
    code, out, _ = run(
        "check",
        "-c",
        config,
        "--sender",
        "john@contoso.com",
        "--recipient",
        "a@contoso.com",
        capsys=capsys,
    )
    assert code == 1
    assert "ERROR  alias expansion failed" in out


def test_config_error_exits_78_with_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """An unknown key is a configuration error: one line naming file and key, exit 78."""
    config = tmp_path / "bad.toml"
    config.write_text("[policy]\nactoin = 'defer'\n")
    code, out, err = run(
        "check", "-c", str(config), "--sender", "", "--recipient", "a@b.c", capsys=capsys
    )
    assert code == 78
    assert out == ""
    assert err.count("\n") == 1
    assert str(config) in err
    assert "policy.actoin" in err


def test_missing_config_exits_78(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A missing configuration file is a configuration error, exit 78."""
    code, _, err = run(
        "check",
        "-c",
        str(tmp_path / "absent.toml"),
        "--sender",
        "",
        "--recipient",
        "a@b.c",
        capsys=capsys,
    )
    assert code == 78
    assert "absent.toml" in err


@pytest.mark.parametrize(
    "args",
    [
        [],
        ["check", "-c", EXAMPLE, "--sender", "a@b.c"],
        ["check", "-c", EXAMPLE, "--recipient", "a@b.c"],
        ["frobnicate"],
    ],
    ids=["no-command", "no-recipient", "no-sender", "unknown-command"],
)
def test_usage_errors_exit_2(args: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    """Usage errors exit 2 with a message on stderr."""
    code, _, err = run(*args, capsys=capsys)
    assert code == 2
    assert "m365-policyd" in err


def test_config_defaults_to_environment(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without -c the configuration comes from $M365_POLICYD_CONFIG."""
    monkeypatch.setenv("M365_POLICYD_CONFIG", str(tmp_path / "from-env.toml"))
    code, _, err = run("check", "--sender", "", "--recipient", "a@b.c", capsys=capsys)
    assert code == 78
    assert "from-env.toml" in err


def test_console_script_version() -> None:
    """The installed console script prints the version and exits 0."""
    script = Path(sys.executable).parent / "m365-policyd"
    result = subprocess.run(
        [str(script), "--version"],
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, "M365_POLICYD_CONFIG": ""},
    )
    assert result.returncode == 0
    assert result.stdout.strip() == f"m365-policyd {__version__}"


@pytest.mark.parametrize(
    ("args", "option"),
    [
        (["bench"], "--connect"),
        (["bench", "--connect", "127.0.0.1:9", "--requests", "x"], "--requests"),
        (["bench", "--connect", "127.0.0.1:9", "--timeout", "0"], "--timeout"),
        (["bench", "--connect", "nowhere"], "--connect"),
    ],
    ids=["no-connect", "not-a-number", "zero-timeout", "bad-endpoint"],
)
def test_bench_usage_errors_are_argparse_errors_of_the_subcommand(
    args: list[str], option: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """A bad `bench` option exits 2 with the subcommand's usage line and an error naming it."""
    code = cli.main(args)
    _, err = capsys.readouterr()
    assert code == 2
    assert err.startswith("usage: m365-policyd bench ")
    error = err.splitlines()[-1]
    assert error.startswith("m365-policyd bench: error: ")
    assert option in error


def test_bench_help_lists_its_options_and_exits_0(capsys: pytest.CaptureFixture[str]) -> None:
    """`m365-policyd bench --help` is the subcommand's argparse help, every option listed."""
    code = cli.main(["bench", "--help"])
    out, _ = capsys.readouterr()
    assert code == 0
    assert out.startswith("usage: m365-policyd bench ")
    for option in (
        "--connect",
        "--connections",
        "--duration",
        "--rate",
        "--processes",
        "--requests",
        "--timeout",
        "--seed",
        "--json",
    ):
        assert option in out
    code = cli.main(["--help"])
    assert code == 0
    assert "bench" in capsys.readouterr().out
