"""The `pipeline` command. Commands parse, call the library, and format: data to stdout, the rest to stderr.

Exit codes: 0 success; 1 an expected failure (one line on stderr); 2 a bad invocation; and the named
EXIT_* constants of exits.py. Never a traceback unless `pipeline --debug` asks for one (failures.py).
"""

from __future__ import annotations

import importlib
import textwrap
from typing import Any

import click

from pipeline.about import DISTRIBUTION
from pipeline.cli.exits import EXIT_BUG, EXIT_INVALID_INPUT, EXIT_PAUSED, EXIT_SOME_FAILED, EXIT_STALLED
from pipeline.cli.failures import is_database_error, one_line, quiet_stdout, save_traceback
from pipeline.errors import JobFileError, PipelineError

__all__ = ["EXIT_BUG", "EXIT_INVALID_INPUT", "EXIT_PAUSED", "EXIT_SOME_FAILED", "EXIT_STALLED", "cli", "main"]

#: Every command: the module that defines it, and the line `pipeline --help` shows for it (the first sentence
#: of its docstring; tests/test_cli_startup.py holds them equal). A command's module, and what it imports (the
#: engine, SQLAlchemy, aiohttp, Celery...), is imported only when that command runs, so `pipeline --help`,
#: `--version` and shell completion of command names import none of them.
COMMANDS: dict[str, tuple[str, str]] = {
    "run": (
        "run_cmds",
        "Validate FILE, store it as a batch, send every request in this process, store every answer.",
    ),
    "estimate": (
        "estimate_cmds",
        "Estimate FILE before sending it: requests, prompt tokens (counted offline), cost (low and high)"
        " and time at the limits given (--rpm, --tpm, --limits-file) or last learned for this account"
        " (--base-url, the key, --organization, --project).",
    ),
    "submit": (
        "fleet_cmds",
        "Validate FILE, store it as a batch and enqueue it for `pipeline worker` processes; returns at once.",
    ),
    "worker": (
        "fleet_cmds",
        "Run a Celery worker in the foreground: consumes chunks, sends their requests with one engine.",
    ),
    "status": (
        "status_cmds",
        "Counts by status, requests in flight, cost, tokens, 429s, failures and limits of BATCH (default:"
        " the latest).",
    ),
    "batches": (
        "status_cmds",
        "List the newest batches with their state, counts by status (ids in full), priority and, while"
        " they send, their share of their key's recent requests.",
    ),
    "errors": (
        "status_cmds",
        "Every failed request of BATCH (default: the latest), streamed: custom_id, error type, HTTP"
        " status, attempts and message (tab-separated, or JSON lines with --json).",
    ),
    "export": (
        "batch_cmds",
        "Write every request of BATCH (default: the latest) with its answer, streamed in constant memory.",
    ),
    "cancel": (
        "batch_cmds",
        "Cancel BATCH: queued requests become cancelled and are never sent; in-flight ones finish.",
    ),
    "retry": (
        "batch_cmds",
        "Send the failed requests of BATCH again (--status to choose); succeeded ones are never re-sent.",
    ),
    "resume": (
        "batch_cmds",
        "Continue a paused BATCH (after the quota was restored, the key fixed, or with a higher --max-cost).",
    ),
    "priority": ("priority_cmds", "Set BATCH's priority to N, also while it runs."),
    "prices": (
        "prices_cmds",
        "The price table cost is computed with: shipped in the package (dated), refreshed into the data"
        " directory by `pipeline prices update`, and --prices FILE over both.",
    ),
    "db": ("db_cmds", "Database schema (a fresh SQLite database is migrated on first use anyway)."),
    "fake-api": (
        "fake_cmds",
        "Serve a fake OpenAI API over HTTP for tests and demos (chat, completions, audio, embeddings,"
        " responses, moderations, the Batch API).",
    ),
    "demo": (
        "fake_cmds",
        "Run every example job shipped with pipeline against a local fake API; CSVs of each batch in OUT.",
    ),
    "ui": (
        "ui_cmds",
        "Serve a local web view of the batches: progress, cost, limits, charts, a row browser; JSON at"
        " /api/.",
    ),
    "report": (
        "ui_cmds",
        "Write one self-contained HTML file on BATCH (default: the latest): its summary, charts and"
        " failures.",
    ),
}


class _Group(click.Group):
    """Turns every error of every command into a message and an exit code (see failures.py), and loads
    each command's module on first use."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in COMMANDS:
            return None
        module = importlib.import_module(f"pipeline.cli.{COMMANDS[cmd_name][0]}")
        commands: list[click.Command] = module.COMMANDS
        return next(c for c in commands if c.name == cmd_name)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        """The command list of `pipeline --help`, from the table: as click would show it, no module loaded."""
        limit = formatter.width - 6 - max(len(name) for name in COMMANDS)
        rows = [(name, short_help(COMMANDS[name][1], limit)) for name in self.list_commands(ctx)]
        with formatter.section("Commands"):
            formatter.write_dl(rows)

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


def short_help(summary: str, limit: int) -> str:
    """`summary` cut to `limit` characters on a word boundary, as click shortens a command's help."""
    if len(summary) <= limit:
        return summary
    return textwrap.shorten(summary, limit, placeholder="...", break_on_hyphens=False)


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
