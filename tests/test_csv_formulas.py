"""CSV exports never hand a spreadsheet a formula to run (OWASP "CSV Injection"); JSONL keeps values exact.

A batch run against the fake API over HTTP, on SQLite and PostgreSQL, whose custom ids, model outputs and
error messages start with each formula prefix, then exported through the CLI.
"""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from pipeline.export import neutralise
from pipeline.fakeapi import FakeServer
from tests.conftest import invoke
from tests.helpers import batch_of, chat_line, parse_csv, parse_jsonl, write_jsonl

#: Text a spreadsheet would run, one per prefix OWASP names: =, +, -, @, tab, carriage return.
FORMULAS = ["=1+2", "+3+4", "-5+6", "@SUM(1,2)", "\t=7+8", "\r=9+1"]
#: Plain numbers: read as numbers, never run; kept as they are.
NUMBERS = ["-1", "+2.5", "-3e4", "-.5"]


def _directive(**how: object) -> str:
    return "fake:" + orjson.dumps(how).decode()


@pytest.fixture
def batch(fake: FakeServer, tmp_path: Path, database_url: str, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("PIPELINE_DATABASE_URL", database_url)
    lines = [chat_line(text, _directive(content=text)) for text in FORMULAS + NUMBERS]
    lines += [chat_line(f"bad-{i}", _directive(status=400, code=t)) for i, t in enumerate(FORMULAS)]
    lines.append(chat_line("plain", "hello"))
    result = invoke("run", str(write_jsonl(tmp_path / "jobs.jsonl", lines)), "--base-url", fake.url)
    assert result.exit_code == 3, result.stderr  # the 400s failed
    return batch_of(result.stdout)


def test_csv_cells_that_start_a_formula_get_a_leading_quote(batch: str) -> None:
    rows = {row["custom_id"]: row for row in parse_csv(invoke("export", batch, "--format", "csv").stdout)}
    for text in FORMULAS:
        row = rows["'" + text]
        assert row["output"] == "'" + text
        assert row["status"] == "succeeded" and row["prompt_tokens"].isdigit()
    for text in NUMBERS:
        assert rows[text]["output"] == text
    assert [rows[f"bad-{i}"]["error_type"] for i in range(len(FORMULAS))] == ["'" + t for t in FORMULAS]
    assert rows["plain"]["output"] == "echo: hello"
    for row in rows.values():
        for cell in row.values():
            assert cell[:1] not in set("=+-@\t\r") or cell in NUMBERS


def test_csv_raw_and_jsonl_keep_values_exact(batch: str) -> None:
    raw = parse_csv(invoke("export", batch, "--format", "csv", "--csv-raw").stdout)
    by_id = {row["custom_id"]: row for row in raw}
    for text in FORMULAS + NUMBERS:
        assert by_id[text]["output"] == text
    assert [by_id[f"bad-{i}"]["error_type"] for i in range(len(FORMULAS))] == FORMULAS
    records = {r["custom_id"]: r for r in parse_jsonl(invoke("export", batch, "--format", "jsonl").stdout)}
    for text in FORMULAS + NUMBERS:
        assert records[text]["output"] == text


def test_neutralise_only_touches_formula_text() -> None:
    assert [neutralise(t) for t in FORMULAS] == ["'" + t for t in FORMULAS]
    assert [neutralise(t) for t in NUMBERS] == NUMBERS
    assert [neutralise(v) for v in (-1, 2.5, None, "", "a=1", "1-2")] == [-1, 2.5, None, "", "a=1", "1-2"]
    assert neutralise("-1+cmd|' /C calc'!A0") == "'-1+cmd|' /C calc'!A0"
