"""The `pipeline` command. Commands parse, call the library, and format: data to stdout, the rest to stderr.

Exit codes: 0 success; 1 an expected failure (message on stderr); 2 a bad invocation; and the named
EXIT_* constants of exits.py.
"""

from __future__ import annotations

from typing import Any

import click

from pipeline.cli.exits import EXIT_INVALID_INPUT, EXIT_PAUSED, EXIT_SOME_FAILED
from pipeline.errors import JobFileError, PipelineError

__all__ = ["EXIT_INVALID_INPUT", "EXIT_PAUSED", "EXIT_SOME_FAILED", "cli", "main"]


class _Group(click.Group):
    """Turns the library's expected errors into messages and exit codes, for every command."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except JobFileError as exc:
            report_invalid(exc)
            ctx.exit(EXIT_INVALID_INPUT)
        except PipelineError as exc:
            raise click.ClickException(str(exc)) from None


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="pipeline")
def cli() -> None:
    """Run bulk OpenAI-style API jobs from a JSONL file: rate-aware, crash-safe, every response stored.

    \b
    Quick start (no servers):
      pipeline run jobs/chat.jsonl            # validate, store, send, store answers; prints the batch id
      pipeline status                         # counts, tokens, errors of the latest batch
      pipeline export --format csv -o out.csv
    """


def main() -> None:
    cli(prog_name="pipeline")


def report_invalid(exc: JobFileError) -> None:
    for error in exc.errors:
        click.echo(str(error), err=True)
    if exc.total_bad > len(exc.errors):
        click.echo(f"... and {exc.total_bad - len(exc.errors)} more invalid line(s)", err=True)
    click.echo(
        f"{exc.total_bad} invalid line(s): nothing was stored or sent "
        "(fix them, or pass --skip-invalid to run the valid lines and record these as failed)",
        err=True,
    )


def _register(*modules: Any) -> None:
    for module in modules:
        for command in module.COMMANDS:
            cli.add_command(command)


from pipeline.cli import batch_cmds, db_cmds, fake_cmds, fleet_cmds, run_cmds  # noqa: E402

_register(run_cmds, fleet_cmds, batch_cmds, db_cmds, fake_cmds)
