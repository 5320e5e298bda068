"""`pipeline fake-api`: the local fake OpenAI server; `pipeline demo`: every example job against it."""

from __future__ import annotations

import asyncio
import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import click

from pipeline.cli.options import FiniteFloat
from pipeline.fakeapi import FakeConfig, FakeServer, serve


@click.command("fake-api")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8787, show_default=True, type=int)
@click.option("--api-key", help="Accept only this key (others get 401); default: any key")
@click.option("--latency", type=FiniteFloat(min=0), default=0.0, show_default=True, help="Seconds per answer")
@click.option(
    "--latency-jitter", type=FiniteFloat(min=0), default=0.0, show_default=True, help="+- seconds of jitter"
)
@click.option(
    "--error-rate", type=FiniteFloat(0, 1), default=0.0, show_default=True, help="Share answered 5xx"
)
@click.option(
    "--hang-rate", type=FiniteFloat(0, 1), default=0.0, show_default=True, help="Share never answered"
)
@click.option("--rpm", type=int, help="Requests per minute, then 429 rate_limit_exceeded")
@click.option("--tpm", type=int, help="Tokens per minute, then 429 rate_limit_exceeded")
@click.option(
    "--window",
    type=FiniteFloat(min=0, min_open=True),
    default=1.0,
    show_default=True,
    help="Seconds per limit bucket",
)
@click.option("--quota", type=int, help="Successful answers before 429 insufficient_quota")
@click.option("--seed", type=int, help="Seed for the injected faults")
@click.option(
    "--batch-seconds",
    type=FiniteFloat(min=0),
    default=0.0,
    show_default=True,
    help="Seconds a Batch API batch runs",
)
@click.option(
    "--batch-expire-rate",
    type=FiniteFloat(0, 1),
    default=0.0,
    show_default=True,
    help="Share of batch lines that expire",
)
def fake_api(host: str, port: int, **config: Any) -> None:
    """Serve a fake OpenAI API over HTTP for tests and demos (chat, completions, audio, embeddings,
    responses, moderations, the Batch API).

    Speaks the real protocol: usage and finish reasons, OpenAI error bodies, x-ratelimit-* headers. Inspect it
    at GET /_fake/stats; change its settings live with POST /_fake/config.
    """
    click.echo(f"fake OpenAI API on http://{host}:{port}/v1", err=True)
    try:
        asyncio.run(serve(FakeConfig(**config), host, port))
    except KeyboardInterrupt:
        pass


@click.command()
@click.option("--out", default="demo-out", show_default=True, type=click.Path(file_okay=False))
def demo(out: str) -> None:
    """Run every example job shipped with pipeline against a local fake API; CSVs of each batch in OUT.

    The examples (the checkout's jobs/, `pipeline.examples` in an installed package) are copied to OUT/jobs
    with the audio clips they name, written there; a fresh SQLite database in OUT keeps these batches apart
    from your own.
    """
    out_dir = Path(out)
    jobs = copy_examples(out_dir / "jobs")
    with FakeServer(FakeConfig(latency=0.05, latency_jitter=0.04, error_rate=0.03, seed=7)) as server:
        env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("PIPELINE_")},
            "OPENAI_API_KEY": os.environ.get("OPENAI_API_KEY", "sk-demo-local-fake"),
            "OPENAI_BASE_URL": server.url,
            "PIPELINE_DATA_DIR": str(out_dir / "data"),
        }
        for job in jobs:
            click.echo(f"== {job}", err=True)
            endpoint = ["--endpoint", "chat"] if job.name.startswith("shorthand") else []
            done = _pipeline(["run", str(job), "--force", *endpoint], env)
            batch_id = done.stdout.strip().splitlines()[-1]
            csv_path = out_dir / f"{job.stem}.csv"
            _pipeline(["export", batch_id, "--format", "csv", "-o", str(csv_path)], env)
            click.echo(csv_path)
    click.echo(f"done; to look at these batches: pipeline batches --data-dir {out_dir / 'data'}", err=True)


def examples_dir() -> Path:
    """The example jobs: `pipeline.examples` of an installed wheel (the build maps the repository's jobs/
    there; an editable install maps it too), else the checkout's jobs/."""
    try:
        spec = importlib.util.find_spec("pipeline.examples")
    except ModuleNotFoundError:
        spec = None
    if spec is not None and spec.submodule_search_locations:
        return Path(next(iter(spec.submodule_search_locations)))
    return Path(__file__).resolve().parents[2] / "jobs"


def copy_examples(to: Path) -> list[Path]:
    """Copy the example job files to `to` and write the clips the audio ones name; the copies, sorted."""
    source = examples_dir()
    jobs = sorted(source.glob("*.jsonl"))
    if not jobs:
        raise click.ClickException(f"no example jobs in {source}: the installation is incomplete")
    to.mkdir(parents=True, exist_ok=True)
    copies = [Path(shutil.copyfile(job, to / job.name)) for job in jobs]
    clips = subprocess.run(
        [sys.executable, str(source / "make_clips.py"), str(to / "clips")], capture_output=True, text=True
    )
    if clips.returncode != 0:
        raise click.ClickException(f"writing the demo's audio clips failed: {clips.stderr.strip()}")
    return copies


def _pipeline(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        [sys.executable, "-m", "pipeline", *args], env=env, text=True, stdout=subprocess.PIPE
    )
    if done.returncode not in (0, 3):
        raise click.ClickException(f"pipeline {' '.join(args)} exited {done.returncode}")
    return done


COMMANDS = [fake_api, demo]
