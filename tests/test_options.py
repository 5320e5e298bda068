"""What the commands take and say: numbers that are numbers, help texts true to the code, the estimate's
options, its price through the Batch API, its precision without exact token counts, and its table at 80
columns."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import click
import orjson
import pytest
from click.testing import CliRunner

from pipeline.cli import COMMANDS, cli
from pipeline.cli.options import FiniteFloat
from pipeline.cli.render import usd
from pipeline.errors import ConfigError
from pipeline.settings import Settings
from tests.conftest import invoke
from tests.helpers import chat_line, write_jsonl

ROOT = Path(__file__).resolve().parent.parent


def every_command() -> Iterator[tuple[str, click.Command]]:
    for name in sorted(COMMANDS):
        command = cli.get_command(click.Context(cli), name)
        assert command is not None
        if isinstance(command, click.Group):
            for sub in sorted(command.commands):
                yield f"{name} {sub}", command.commands[sub]
        else:
            yield name, command


NUMBER_OPTIONS = [
    (name, param.opts[-1])
    for name, command in every_command()
    for param in command.params
    if isinstance(param, click.Option) and isinstance(param.type, click.types.FloatParamType)
]


def test_every_option_taking_a_fractional_number_is_a_finite_float() -> None:
    assert len(NUMBER_OPTIONS) >= 12  # timeout (every sender), max-cost, wait, interval, the fake's knobs
    for name, command in every_command():
        for param in command.params:
            if isinstance(param.type, click.types.FloatParamType):
                assert isinstance(param.type, FiniteFloat), (name, param.opts)


@pytest.mark.parametrize(("command", "option"), NUMBER_OPTIONS)
@pytest.mark.parametrize("value", ["nan", "inf", "-inf", "NaN"])
def test_nan_and_infinity_are_refused(command: str, option: str, value: str) -> None:
    result = CliRunner().invoke(cli, [*command.split(), option, value])
    # The option comes first, so it is converted first: an accepted value would fail later, elsewhere.
    assert result.exit_code == 2 and f"Invalid value for '{option}'" in result.output, result.output


@pytest.mark.parametrize("value", ["nan", "inf"])
def test_nan_and_infinity_are_refused_from_the_environment(value: str) -> None:
    with pytest.raises(ConfigError, match="finite number"):
        Settings.load(environ={"PIPELINE_TIMEOUT": value})


def test_help_texts_say_what_the_code_does() -> None:
    run_help = invoke("run", "--help").stdout
    assert "default: a .pipeline/ here or in a parent, else the user data directory" in " ".join(
        run_help.split()
    )
    assert "Store and send the valid lines" in run_help
    assert "Store and enqueue the valid lines" in invoke("submit", "--help").stdout
    estimate_help = invoke("estimate", "--help").stdout
    assert "Estimate the valid lines" in estimate_help and "store and run" not in estimate_help.lower()
    for send_only in ("--max-in-flight", "--timeout", "--max-attempts", "--metrics-port", "--max-cost"):
        assert send_only not in estimate_help, send_only
    for option in ("--via", "--base-url", "--organization", "--project", "--rpm", "--tpm", "--limits-file"):
        assert option in estimate_help, option


def test_estimate_through_the_batch_api_is_half_price(tmp_path: Path) -> None:
    job = write_jsonl(
        tmp_path / "j.jsonl",
        [chat_line(f"q{i}", f"question {i}", model="gpt-4o", max_tokens=5000) for i in range(10)],
    )
    direct = orjson.loads(invoke("estimate", str(job), "--json", "--rpm", "60").stdout)
    batch = orjson.loads(invoke("estimate", str(job), "--json", "--via", "batch-api", "--rpm", "60").stdout)
    assert direct["via"] == "direct" and batch["via"] == "batch-api"
    assert direct["cost_usd"]["high"] > 0
    assert batch["cost_usd"]["high"] == pytest.approx(direct["cost_usd"]["high"] / 2, abs=1e-6)
    assert direct["seconds"] == 10.0 and batch["seconds"] is None  # the Batch API: its own 24 h window
    text = invoke("estimate", str(job), "--via", "batch-api").stdout
    assert "through the Batch API (half price)" in text and "within its 24 h window" in text


def test_the_estimate_table_fits_80_columns_with_the_cost_whole(tmp_path: Path) -> None:
    lines = [
        chat_line("a", "hello " * 50, model="a-rather-long-custom-deployment-name-v2", max_tokens=100000)
    ]
    lines += [chat_line(f"o{i}", "hi", model="o1", max_tokens=100000) for i in range(3000)]
    job = write_jsonl(tmp_path / "wide.jsonl", lines)
    prices = tmp_path / "p.json"
    prices.write_bytes(
        orjson.dumps({"models": {"a-rather-long-custom-deployment-name-v2": {"input": 1, "output": 9}}})
    )
    result = CliRunner(env={"COLUMNS": "80"}).invoke(
        cli, ["estimate", str(job), "--prices", str(prices), "--rpm", "500", "--tpm", "2000000"]
    )
    assert result.exit_code == 0, result.output
    lines_out = result.stdout.splitlines()
    assert max(len(line) for line in lines_out) <= 80, result.stdout
    data = orjson.loads(invoke("estimate", str(job), "--json", "--prices", str(prices)).stdout)
    for model in data["models"]:  # every cost whole, on one line
        whole = f"{usd(model['cost_low'])}-{usd(model['cost_high'])}"
        assert any(whole in line for line in lines_out), (whole, result.stdout)
    assert "500 rpm" in result.stdout and "2M tpm" in result.stdout  # the last column is not cut off


def test_without_exact_token_counts_the_estimate_says_so(tmp_path: Path) -> None:
    job = write_jsonl(tmp_path / "j.jsonl", [chat_line("a", "hello world, how are you?")])
    code = (
        "import sys; sys.modules['toktok'] = None\n"  # as if the [tokens] extra were not installed
        "from pipeline.send.tokens import count_tokens, exact\n"
        "assert not exact() and count_tokens('hello world', 'gpt-4o') == 3, count_tokens('hello world')\n"
        "from pipeline.cli import main\n"
        "main()\n"
    )
    env = {**os.environ, "PIPELINE_DATA_DIR": str(tmp_path / "data")}

    def estimate(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-c", code, "estimate", str(job), *args],
            env=env,
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=60,
        )

    done = estimate("--json")
    assert done.returncode == 0, done.stderr
    data = orjson.loads(done.stdout)
    assert data["prompt_tokens_exact"] is False and data["prompt_tokens"] == 7 + 4  # ceil(25 / 4) + framing
    assert "prompt tokens are estimates (characters / 4)" in estimate().stdout
    exact = orjson.loads(invoke("estimate", str(job), "--json").stdout)
    assert exact["prompt_tokens_exact"] is True  # toktok, from the test extra
