"""Settings: flags over environment over defaults, misspellings refused, the key never shown."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.errors import ConfigError
from pipeline.settings import DEFAULT_BASE_URL, Settings, mask_url
from tests.conftest import invoke


def test_defaults_and_environment() -> None:
    s = Settings.load(environ={"OPENAI_API_KEY": "sk-1"})
    assert s.base_url == DEFAULT_BASE_URL and s.max_in_flight == 512 and s.api_key is not None
    s = Settings.load(environ={"PIPELINE_MAX_IN_FLIGHT": "7", "OPENAI_BASE_URL": "http://x/v1/"})
    assert s.max_in_flight == 7 and s.base_url == "http://x/v1" and s.api_key is None


def test_flags_win_over_environment() -> None:
    s = Settings.load({"max_in_flight": 9, "timeout": None}, environ={"PIPELINE_MAX_IN_FLIGHT": "7"})
    assert s.max_in_flight == 9 and s.timeout == 600.0


def test_a_named_key_variable() -> None:
    s = Settings.load({"api_key_env": "MY_KEY"}, environ={"MY_KEY": "sk-mine", "OPENAI_API_KEY": "sk-other"})
    assert s.require_api_key().reveal() == "sk-mine"


def test_misspelled_variables_are_refused() -> None:
    with pytest.raises(ConfigError, match="PIPELINE_MAX_INFLIGHT"):
        Settings.load(environ={"PIPELINE_MAX_INFLIGHT": "7"})


def test_bad_values_are_refused() -> None:
    with pytest.raises(ConfigError, match="max_in_flight"):
        Settings.load(environ={"PIPELINE_MAX_IN_FLIGHT": "lots"})
    with pytest.raises(ConfigError, match="positive"):
        Settings.load(environ={"PIPELINE_TIMEOUT": "0"})


def test_misspelled_variable_is_a_usage_error_on_the_command_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PIPELINE_DATABSE_URL", "sqlite:///x.db")
    result = invoke("status")
    assert result.exit_code == 2 and "PIPELINE_DATABSE_URL" in result.stderr


def test_key_is_masked_everywhere() -> None:
    s = Settings.load(environ={"OPENAI_API_KEY": "sk-verysecret"})
    assert "verysecret" not in repr(s) and "verysecret" not in str(s.api_key)


def test_mask_url() -> None:
    assert mask_url("postgresql+psycopg://u:pw@h:5432/db") == "postgresql+psycopg://u:***@h:5432/db"
    assert mask_url("redis://h:6379/0") == "redis://h:6379/0"


def test_sqlite_lives_in_the_data_dir(tmp_path: Path) -> None:
    s = Settings.load(environ={"PIPELINE_DATA_DIR": str(tmp_path / "d")})
    assert s.db_url == f"sqlite:///{tmp_path / 'd' / 'pipeline.db'}"
