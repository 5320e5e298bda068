"""The Python API in a real Jupyter kernel (its own running event loop), executed by nbclient.

The kernel is this interpreter (a kernel spec written for the test names sys.executable), so it imports the
pipeline under test; the fake API runs in the test process and the kernel reaches it over loopback.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import nbformat
import pytest
from nbclient import NotebookClient

from pipeline.fakeapi import FakeServer

pytestmark = pytest.mark.integration

#: The answer to every request but the first comes this many seconds late, so the first result is read
#: while the others are out: the test asserts that order, whatever the machine's load.
SLOW_SECONDS = 4

CELLS = [
    # 1. the kernel: this interpreter, a loop of its own running
    """
import asyncio, os, sys
import pipeline
print("KERNEL", sys.executable, asyncio.get_running_loop().is_running())
""",
    # 2. submit, and read each result as it is stored
    """
lines = [{"custom_id": "fast", "method": "POST", "url": "/v1/chat/completions",
          "body": {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "fast"}]}}]
slow = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": SLOW}]}
lines += [{"custom_id": f"slow-{i}", "method": "POST", "url": "/v1/chat/completions", "body": slow}
          for i in range(5)]
batch = pipeline.submit(lines, base_url=URL)
seen = []
for result in batch:
    if not seen:
        first = (result["custom_id"], batch.state.value, batch.counts["succeeded"])
    seen.append(result["custom_id"])
print("FIRST", *first)
print("ALL", len(seen), len(set(seen)), batch.state.value)
""",
    # 3. a wrong key: the typed pause exception
    """
os.environ["WRONG_KEY"] = "sk-wrong"
rows = [{"model": "gpt-4o-mini", "messages": [{"role": "user", "content": f"k{i}"}]} for i in range(3)]
try:
    pipeline.run(rows, endpoint="chat", base_url=URL, api_key_env="WRONG_KEY")
    print("NOT PAUSED")
except pipeline.BatchPaused as exc:
    print("PAUSED", exc.batch_id, "401" in exc.reason)
""",
    # 4. a DataFrame of the results
    """
frame = batch.to_pandas()
print("FRAME", len(frame), sorted(frame["custom_id"])[0], set(frame["status"]))
""",
    # 5. progress: one display output, updated in place
    """
more = [{"model": "gpt-4o-mini", "messages": [{"role": "user", "content": f"p{i}"}]} for i in range(3)]
done = pipeline.run(more, endpoint="chat", base_url=URL)
print("RUN", done.state.value)
""",
]


def test_a_notebook_submits_streams_pauses_and_makes_a_dataframe(
    fake: FakeServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    kernel_dir = tmp_path / "jupyter" / "kernels" / "pipeline-under-test"
    kernel_dir.mkdir(parents=True)
    spec = {
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "pipeline under test",
        "language": "python",
    }
    (kernel_dir / "kernel.json").write_text(json.dumps(spec))
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))
    monkeypatch.setenv("JUPYTER_RUNTIME_DIR", str(tmp_path / "runtime"))
    monkeypatch.setenv("IPYTHONDIR", str(tmp_path / "ipython"))

    setup = f"URL = {fake.url!r}\nSLOW = {json.dumps({'latency': SLOW_SECONDS})!r}\nSLOW = 'fake:' + SLOW\n"
    cells = [nbformat.v4.new_code_cell(setup + CELLS[0])] + [nbformat.v4.new_code_cell(c) for c in CELLS[1:]]
    notebook = nbformat.v4.new_notebook(cells=cells)
    client = NotebookClient(
        notebook,
        kernel_name="pipeline-under-test",
        timeout=120,
        resources={"metadata": {"path": str(tmp_path)}},
    )
    client.execute()

    printed = [_stdout(cell) for cell in notebook.cells]
    assert f"KERNEL {sys.executable} True" in printed[0]
    assert "FIRST fast in_progress" in printed[1]  # read before the batch was done
    first_succeeded = int(printed[1].split("FIRST fast in_progress ")[1].split()[0])
    assert first_succeeded < 6
    assert "ALL 6 6 completed" in printed[1]
    assert "PAUSED" in printed[2] and printed[2].strip().endswith("True")
    assert "FRAME 6 fast {'succeeded'}" in printed[3]
    assert "RUN completed" in printed[4]
    progress = [_display(cell) for cell in notebook.cells]
    assert any("done (" in text for text in progress[1]), progress[1]  # the line above the results
    assert any("3/3 done" in text for text in progress[4]), progress[4]


def _stdout(cell: Any) -> str:
    return "".join(o.get("text", "") for o in cell.outputs if o.get("output_type") == "stream")


def _display(cell: Any) -> list[str]:
    return [
        str(o.get("data", {}).get("text/plain", ""))
        for o in cell.outputs
        if o.get("output_type") in ("display_data", "update_display_data")
    ]
