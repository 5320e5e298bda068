"""The endpoint objects: one place per endpoint, and no other module that knows an endpoint's URL."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from pipeline.endpoints import BY_URL, ENDPOINTS, by_name, by_url
from pipeline.errors import ConfigError

PACKAGE = Path(__file__).resolve().parent.parent / "pipeline"
#: Where endpoint URLs may be named: the endpoint objects, and the fake API that answers them.
ALLOWED = (PACKAGE / "endpoints", PACKAGE / "fakeapi")
#: A name for a set of URLs to switch on (`AUDIO_URLS`, `CHAT_URLS`...).
URL_SET = re.compile(r"\b[A-Z][A-Z_]*_URLS\b")


def _sources() -> list[Path]:
    return sorted(p for p in PACKAGE.rglob("*.py") if not any(p.is_relative_to(a) for a in ALLOWED))


def _code_strings(tree: ast.AST) -> list[str]:
    """Every string constant of a module but its docstrings."""
    docstrings = {
        id(node.body[0].value)
        for node in ast.walk(tree)
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef)
        and node.body
        and isinstance(node.body[0], ast.Expr)
        and isinstance(node.body[0].value, ast.Constant)
    }
    return [
        node.value
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings
    ]


def test_only_the_endpoint_modules_and_the_fake_mention_an_endpoint_url() -> None:
    """Adding an endpoint is one module in pipeline/endpoints/ (and the fake's handler): nothing else may
    name an endpoint's URL or path (in code, comments or docstrings), hold a `/v1/` literal in code, or keep
    a set of URLs to switch on."""
    urls = {e.url for e in ENDPOINTS.values()} | {e.path for e in ENDPOINTS.values()}
    mentions: dict[str, list[str]] = {}
    for path in _sources():
        text = path.read_text()
        found = sorted(url for url in urls if url in text)
        found += [s for s in _code_strings(ast.parse(text)) if "/v1/" in s]
        found += URL_SET.findall(text)
        if found:
            mentions[str(path.relative_to(PACKAGE.parent))] = found
    assert mentions == {}
    assert _sources(), "the scan found no modules"


def test_the_scan_sees_a_mention_where_there_is_one(tmp_path: Path) -> None:
    code = 'PLAIN = "/v1/embeddings"\nAUDIO_URLS = frozenset()\ndef f():\n    """/v1/files"""\n'
    assert _code_strings(ast.parse(code)) == ["/v1/embeddings"]
    assert URL_SET.findall(code) == ["AUDIO_URLS"]


def test_every_endpoint_is_found_by_its_name_and_by_its_url() -> None:
    for name, endpoint in ENDPOINTS.items():
        assert by_name(name) is endpoint and by_url(endpoint.url) is endpoint
        assert endpoint.url == "/v1" + endpoint.path
    assert len(BY_URL) == len(ENDPOINTS)
    with pytest.raises(ConfigError, match="unknown endpoint 'chats'"):
        by_name("chats")
