"""The `pipeline` command. Commands parse, call the library, and format: data to stdout, the rest to stderr.

Exit codes: 0 success; 1 an expected failure (one line on stderr); 2 a bad invocation; and the named
EXIT_* constants of exits.py. Never a traceback unless `pipeline --debug` asks for one (failures.py).
"""

from __future__ import annotations

import importlib
from typing import Any

import click

from pipeline import DISTRIBUTION
from pipeline.cli.exits import EXIT_BUG, EXIT_INVALID_INPUT, EXIT_PAUSED, EXIT_SOME_FAILED
from pipeline.cli.failures import is_database_error, one_line, quiet_stdout, save_traceback
from pipeline.errors import JobFileError, PipelineError

__all__ = ["EXIT_BUG", "EXIT_INVALID_INPUT", "EXIT_PAUSED", "EXIT_SOME_FAILED", "cli", "main"]

#: Every command and where it is defined (module:attribute in pipeline.cli). A command's module is imported
#: when the command runs, so no command pays for another's libraries, and `pipeline --version` or shell
#: completion of command names import none of them.
COMMANDS = {
    "run": "run_cmds:run",
    "submit": "fleet_cmds:submit",
    "worker": "fleet_cmds:worker",
    "status": "batch_cmds:status",
    "export": "batch_cmds:export",
    "batches": "batch_cmds:batches",
    "cancel": "batch_cmds:cancel",
    "retry": "batch_cmds:retry",
    "resume": "batch_cmds:resume",
    "priority": "priority_cmds:priority",
    "db": "db_cmds:db",
    "fake-api": "fake_cmds:fake_api",
    "demo": "fake_cmds:demo",
}


class _Group(click.Group):
    """Loads each command when it is used, and turns every error of every command into a message and an
    exit code (see failures.py)."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        where = COMMANDS.get(cmd_name)
        if where is None:
            return None
        module, attribute = where.split(":")
        command: click.Command = getattr(importlib.import_module(f"pipeline.cli.{module}"), attribute)
        return command

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
