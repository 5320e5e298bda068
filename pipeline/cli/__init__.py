"""The `pipeline` command. Commands parse, call the library, and format: data to stdout, the rest to stderr.

Exit codes: 0 success; 1 an expected failure (one line on stderr); 2 a bad invocation; and the named
EXIT_* constants of exits.py. Never a traceback unless `pipeline --debug` asks for one (failures.py).
"""

from __future__ import annotations

import importlib
from typing import Any

import click

from pipeline.about import DISTRIBUTION
from pipeline.cli.exits import EXIT_BUG, EXIT_INVALID_INPUT, EXIT_PAUSED, EXIT_SOME_FAILED, EXIT_STALLED
from pipeline.cli.failures import is_database_error, one_line, quiet_stdout, save_traceback
from pipeline.errors import JobFileError, PipelineError

__all__ = ["EXIT_BUG", "EXIT_INVALID_INPUT", "EXIT_PAUSED", "EXIT_SOME_FAILED", "EXIT_STALLED", "cli", "main"]

#: Every command and the module that defines it: a command's module (and what it imports: the engine,
#: aiohttp, Celery...) is imported only when that command runs, so `pipeline status` starts fast and
#: `pipeline --version` or shell completion of command names import none of them.
COMMAND_MODULES = {
    "run": "run_cmds",
    "estimate": "estimate_cmds",
    "submit": "fleet_cmds",
    "worker": "fleet_cmds",
    "status": "status_cmds",
    "batches": "status_cmds",
    "errors": "status_cmds",
    "export": "batch_cmds",
    "cancel": "batch_cmds",
    "retry": "batch_cmds",
    "resume": "batch_cmds",
    "priority": "priority_cmds",
    "prices": "prices_cmds",
    "db": "db_cmds",
    "fake-api": "fake_cmds",
    "demo": "fake_cmds",
    "ui": "ui_cmds",
    "report": "ui_cmds",
}


class _Group(click.Group):
    """Turns every error of every command into a message and an exit code (see failures.py), and loads
    each command's module on first use."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMAND_MODULES)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        module = COMMAND_MODULES.get(cmd_name)
        if module is None:
            return None
        commands: list[click.Command] = importlib.import_module(f"pipeline.cli.{module}").COMMANDS
        return next(c for c in commands if c.name == cmd_name)

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except JobFileError as exc:
            report_invalid(exc)
            ctx.exit(EXIT_INVALID_INPUT)
        except PipelineError as exc:
            raise click.ClickException(str(exc)) from None
        except BrokenPipeError:  # the reader of stdout went away (`pipeline export | head`)
            quiet_stdout()
            ctx.exit(1)
        except (click.ClickException, click.exceptions.Exit, click.Abort):
            raise
        except Exception as exc:
            if is_database_error(exc, "OperationalError"):  # the database failed: read-only, full, gone
                raise click.ClickException(f"database error: {one_line(exc)}") from None
            if ctx.params.get("debug"):
                raise
            _report_bug(ctx, exc)


def _report_bug(ctx: click.Context, exc: Exception) -> None:
    path = save_traceback(ctx.invoked_subcommand)
    where = f"traceback in {path}" if path else "the traceback could not be saved"
    click.echo(
        f"Error: unexpected {type(exc).__name__}: {one_line(exc)} "
        f"(a bug in pipeline; {where}; `pipeline --debug ...` prints it)",
        err=True,
    )
    ctx.exit(EXIT_BUG)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name=DISTRIBUTION)
@click.option("--debug", is_flag=True, help="Show the full traceback of an unexpected error (a bug)")
def cli(debug: bool) -> None:
    """Run bulk OpenAI-style API jobs from a JSONL file: rate-aware, crash-safe, every response stored.

    \b
    Quick start (no servers):
      pipeline estimate jobs/chat.jsonl       # requests, tokens, cost and time before sending anything
      pipeline run jobs/chat.jsonl            # validate, store, send, store answers; prints the batch id
      pipeline status                         # state, counts, cost, tokens, failures of the latest batch
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
