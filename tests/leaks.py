"""Everywhere an API key could land, read back as text, and the search for it (tests/test_secrets.py).

A key counts as found if the whole key, or any 12 characters in a row of its secret part (what follows
`sk-...-`), appear: a key cut, masked in the middle or split over two fields still leaks.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Iterable, Iterator
from typing import Any

import httpx
import redis
from sqlalchemy import MetaData, create_engine, select
from sqlalchemy.pool import NullPool

#: The shortest run of a key's secret characters that counts as a leak.
FRAGMENT = 12


def fragments(key: str) -> set[str]:
    """The whole key and every FRAGMENT-character run of its secret part."""
    secret = key.rsplit("-", 1)[-1]
    assert len(secret) >= FRAGMENT, "the test's key needs a longer secret part"
    return {key} | {secret[i : i + FRAGMENT] for i in range(len(secret) - FRAGMENT + 1)}


def leaks(places: dict[str, str], keys: Iterable[str]) -> list[tuple[str, str]]:
    """(place, fragment) for every fragment of `keys` found in the text of each place."""
    wanted = {fragment for key in keys for fragment in fragments(key)}
    return sorted((place, f) for place, text in places.items() for f in wanted if f in text)


def as_text(value: Any) -> str:
    """A stored value as searchable text: bytes as Latin-1 (every byte a character), JSON as JSON."""
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value).decode("latin-1")
    if isinstance(value, dict | list):
        return json.dumps(value)
    return "" if value is None else str(value)


def dump_database(url: str) -> str:
    """Every column of every row of every table (text, JSON, blobs, numbers), one line per row."""
    engine = create_engine(url, poolclass=NullPool)
    meta = MetaData()
    try:
        meta.reflect(engine)
        lines: list[str] = []
        with engine.connect() as conn:
            for table in meta.sorted_tables:
                for row in conn.execute(select(table)):
                    lines.append(table.name + ": " + " | ".join(as_text(v) for v in row))
        return "\n".join(lines)
    finally:
        engine.dispose()


def dump_redis(url: str) -> str:
    """Every key of every database of the server at `url` with its value, whatever its type, and inside
    JSON values (Celery's messages among them) every string that decodes as base64, decoded."""
    base = url.rsplit("/", 1)[0]
    with redis.Redis.from_url(base) as admin:
        databases = int(admin.config_get("databases")["databases"])
    lines: list[str] = []
    for n in range(databases):
        with redis.Redis.from_url(f"{base}/{n}") as client:
            for key in client.scan_iter(count=1000):
                values = _values(client, key)
                lines.append(f"db{n} {as_text(key)}: " + " | ".join(as_text(v) for v in values))
                lines.extend(_decoded(values))
    return "\n".join(lines)


def _values(client: redis.Redis, key: bytes) -> list[Any]:
    kind = client.type(key).decode()
    if kind == "string":
        return [client.get(key)]
    if kind == "hash":
        return [part for pair in client.hgetall(key).items() for part in pair]
    if kind == "list":
        return list(client.lrange(key, 0, -1))
    if kind == "set":
        return list(client.smembers(key))
    if kind == "zset":
        return [member for member, _ in client.zrange(key, 0, -1, withscores=True)]
    if kind == "stream":
        return [as_text(entry) for entry in client.xrange(key)]
    if kind == "none":  # gone since the scan (a queue emptied): it holds nothing any more
        return []
    raise AssertionError(f"Redis key {key!r} of a type the test does not read: {kind}")


def _decoded(values: list[Any]) -> Iterator[str]:
    """Inside every JSON value, the strings that are base64 (how kombu carries a message body), decoded."""
    for value in values:
        try:
            tree = json.loads(as_text(value))
        except ValueError:
            continue
        for text in _strings(tree):
            try:
                yield base64.b64decode(text, validate=True).decode("latin-1")
            except (binascii.Error, ValueError):
                pass


def _strings(tree: Any) -> Iterator[str]:
    if isinstance(tree, str):
        yield tree
    elif isinstance(tree, dict):
        for k, v in tree.items():
            yield k
            yield from _strings(v)
    elif isinstance(tree, list):
        for v in tree:
            yield from _strings(v)


def fake_files(base_url: str, key: str) -> dict[str, str]:
    """Every file the fake API holds (uploaded Batch API inputs, its output and error files): name -> bytes as
    text, read through its own API."""
    with httpx.Client(base_url=base_url, headers={"Authorization": f"Bearer {key}"}, timeout=30) as http:
        listing = http.get("/files", params={"limit": 10000})
        listing.raise_for_status()
        files = listing.json()["data"]
        return {f"fake file {f['filename']}": http.get(f"/files/{f['id']}/content").text for f in files}
