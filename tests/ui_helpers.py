"""`pipeline ui` as a real process, and the system's headless Chromium driven by Playwright, for the web
view's tests. Screenshots go to $TEST_ARTIFACTS (else the test's tmp_path), printed by the tests."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from tests.services import free_port

CHROMIUM = "/usr/bin/chromium"
#: Chromium's flags: no sandbox (root in CI), and nothing of its own on the network.
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
#: Seconds `pipeline ui` may take to listen.
START_SECONDS = 30


def artifacts_dir(tmp_path: Path, name: str) -> Path:
    """Where a test saves its screenshots (printed, so a failing run says where to look)."""
    root = Path(os.environ.get("TEST_ARTIFACTS") or tmp_path)
    path = root / name
    path.mkdir(parents=True, exist_ok=True)
    print(f"screenshots in {path}")
    return path


class UiServer:
    """A `pipeline ui` process on a free loopback port."""

    def __init__(self, database_url: str, *args: str, token: str | None = "t0ken") -> None:
        self.port = free_port()
        self.token = token
        env = {k: v for k, v in os.environ.items() if not k.startswith("PIPELINE_")}
        env["PIPELINE_DATABASE_URL"] = database_url
        command = [sys.executable, "-m", "pipeline", "ui", "--port", str(self.port), *args]
        command += ["--token", token] if token else ["--no-token"]
        self.proc = subprocess.Popen(command, env=env, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + START_SECONDS
        while not _listening(self.port):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise AssertionError(
                    f"pipeline ui did not start: {self.proc.stderr.read() if self.proc.stderr else ''}"
                )
            time.sleep(0.05)

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        if self.proc.stderr:
            self.proc.stderr.close()


def _listening(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.2)
        return s.connect_ex(("127.0.0.1", port)) == 0


@contextmanager
def ui_server(database_url: str, *args: str, token: str | None = "t0ken") -> Iterator[UiServer]:
    server = UiServer(database_url, *args, token=token)
    try:
        yield server
    finally:
        server.stop()


@contextmanager
def chromium() -> Iterator[Any]:
    """A Playwright browser on the system's Chromium (Playwright never downloads one)."""
    sync_api = pytest.importorskip("playwright.sync_api")
    if not Path(CHROMIUM).exists():
        message = f"{CHROMIUM} is missing: apt-get install -y chromium"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()
