"""`pipeline fake-api`: the local fake OpenAI server; `pipeline demo`: every example job against it."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import click

from pipeline.fakeapi import FakeConfig, FakeServer, serve


@click.command("fake-api")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8787, show_default=True, type=int)
@click.option("--api-key", help="Accept only this key (others get 401); default: any key")
@click.option("--latency", type=float, default=0.0, show_default=True, help="Seconds per answer")
@click.option("--latency-jitter", type=float, default=0.0, show_default=True, help="+- seconds of jitter")
@click.option("--error-rate", type=float, default=0.0, show_default=True, help="Share answered 5xx")
@click.option("--hang-rate", type=float, default=0.0, show_default=True, help="Share never answered")
@click.option("--rpm", type=int, help="Requests per minute, then 429 rate_limit_exceeded")
@click.option("--tpm", type=int, help="Tokens per minute, then 429 rate_limit_exceeded")
@click.option("--window", type=float, default=1.0, show_default=True, help="Seconds per limit bucket")
@click.option("--quota", type=int, help="Successful answers before 429 insufficient_quota")
@click.option("--seed", type=int, help="Seed for the injected faults")
@click.option(
    "--batch-seconds", type=float, default=0.0, show_default=True, help="Seconds a Batch API batch runs"
)
@click.option(
    "--batch-expire-rate", type=float, default=0.0, show_default=True, help="Share of batch lines that expire"
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
    """Run every example in jobs/ against a local fake API and export each batch to CSV in OUT.

    Uses a fresh SQLite database in OUT, so it never mixes with your own batches.
    """
    jobs = sorted(Path("jobs").glob("*.jsonl"))
    if not jobs:
        raise click.ClickException("no jobs/*.jsonl here: run this from the project checkout")
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    with FakeServer(FakeConfig(latency=0.05, latency_jitter=0.04, error_rate=0.03, seed=7)) as server:
        env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("PIPELINE_")},
            "OPENAI_API_KEY": os.environ.get("OPENAI_API_KEY", "sk-demo-local-fake"),
            "OPENAI_BASE_URL": server.url,
            "PIPELINE_DATA_DIR": str(out_dir / "data"),
        }
        for job in jobs:
            if job.name.startswith("audio") and not (job.parent / "clips").is_dir():
                subprocess.run([sys.executable, str(job.parent / "make_clips.py")], check=True)
            click.echo(f"== {job}", err=True)
            endpoint = ["--endpoint", "chat"] if job.name.startswith("shorthand") else []
            done = _pipeline(["run", str(job), "--force", *endpoint], env)
            batch_id = done.stdout.strip().splitlines()[-1]
            csv_path = out_dir / f"{job.stem}.csv"
            _pipeline(["export", batch_id, "--format", "csv", "-o", str(csv_path)], env)
            click.echo(csv_path)
    click.echo(f"done; to look at these batches: pipeline batches --data-dir {out_dir / 'data'}", err=True)


def _pipeline(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        [sys.executable, "-m", "pipeline", *args], env=env, text=True, stdout=subprocess.PIPE
    )
    if done.returncode not in (0, 3):
        raise click.ClickException(f"pipeline {' '.join(args)} exited {done.returncode}")
    return done


COMMANDS = [fake_api, demo]
