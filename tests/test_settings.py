"""Tests for orchestrate.settings: sources, precedence and error messages."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from orchestrate.errors import SettingsError
from orchestrate.settings import DEFAULT_MODEL, load_settings


@pytest.fixture(autouse=True)
def clean_env(tmp_path, monkeypatch):
    """Run each test in an empty folder with no ORCHESTRATE_* variables set."""
    for name in list(os.environ):
        if name.upper().startswith("ORCHESTRATE_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def write_toml(folder, text):
    (folder / "orchestrate.toml").write_text(text, encoding="utf-8")


def test_defaults():
    settings = load_settings()
    assert settings.workers == 4
    assert settings.model == DEFAULT_MODEL == "embedded:smollm2-135m"
    assert settings.runs_dir == Path("runs")
    assert settings.crew_file is None
    assert settings.embedded_model is None
    assert settings.max_tokens == 512
    assert settings.temperature == 0.0
    assert settings.log_level == "WARNING"
    assert settings.models_dir == settings.home / "models"


def test_env_var(monkeypatch):
    monkeypatch.setenv("ORCHESTRATE_WORKERS", "8")
    monkeypatch.setenv("ORCHESTRATE_RUNS_DIR", "/tmp/elsewhere")
    settings = load_settings()
    assert settings.workers == 8
    assert settings.runs_dir == Path("/tmp/elsewhere")


def test_toml_in_cwd(clean_env):
    write_toml(clean_env, 'workers = 7\nmodel = "scripted:answers.yaml"\nmax_tokens = 100\n')
    settings = load_settings()
    assert (settings.workers, settings.model, settings.max_tokens) == (
        7,
        "scripted:answers.yaml",
        100,
    )


def test_dotenv_in_cwd(clean_env):
    (clean_env / ".env").write_text("ORCHESTRATE_MAX_TOKENS=256\n", encoding="utf-8")
    assert load_settings().max_tokens == 256


def test_env_beats_dotenv_and_toml(clean_env, monkeypatch):
    write_toml(clean_env, "workers = 7\n")
    (clean_env / ".env").write_text("ORCHESTRATE_WORKERS=6\n", encoding="utf-8")
    assert load_settings().workers == 6
    monkeypatch.setenv("ORCHESTRATE_WORKERS", "5")
    assert load_settings().workers == 5


def test_flags_beat_env(monkeypatch):
    monkeypatch.setenv("ORCHESTRATE_WORKERS", "5")
    monkeypatch.setenv("ORCHESTRATE_MODEL", "scripted:env.yaml")
    settings = load_settings(workers=9, model="scripted:flag.yaml")
    assert (settings.workers, settings.model) == (9, "scripted:flag.yaml")


def test_none_flags_are_ignored(clean_env, monkeypatch):
    write_toml(clean_env, "max_tokens = 100\n")
    monkeypatch.setenv("ORCHESTRATE_WORKERS", "5")
    settings = load_settings(workers=None, max_tokens=None, model=None)
    assert (settings.workers, settings.max_tokens, settings.model) == (5, 100, DEFAULT_MODEL)


@pytest.mark.parametrize("value", ["abc", "0", "65", "-1", "2.5"])
def test_bad_env_value_is_one_line_settings_error(monkeypatch, value):
    monkeypatch.setenv("ORCHESTRATE_WORKERS", value)
    with pytest.raises(SettingsError) as info:
        load_settings()
    message = str(info.value)
    assert message.startswith("ORCHESTRATE_WORKERS: ")
    assert repr(value) in message
    assert "\n" not in message
    assert info.value.exit_code == 2


def test_bad_flag_value_names_the_setting():
    with pytest.raises(SettingsError) as info:
        load_settings(workers=0)
    assert str(info.value) == (
        "ORCHESTRATE_WORKERS: Input should be greater than or equal to 1 (got 0)"
    )


def test_several_bad_values_are_all_named(monkeypatch):
    monkeypatch.setenv("ORCHESTRATE_WORKERS", "abc")
    monkeypatch.setenv("ORCHESTRATE_TEMPERATURE", "9")
    with pytest.raises(SettingsError) as info:
        load_settings()
    message = str(info.value)
    assert "ORCHESTRATE_WORKERS" in message
    assert "ORCHESTRATE_TEMPERATURE" in message
    assert "\n" not in message


def test_bad_log_level(monkeypatch):
    monkeypatch.setenv("ORCHESTRATE_LOG_LEVEL", "LOUD")
    with pytest.raises(SettingsError, match=r"^ORCHESTRATE_LOG_LEVEL: .*'LOUD'"):
        load_settings()


def test_bad_value_in_toml(clean_env):
    write_toml(clean_env, "workers = 0\n")
    with pytest.raises(SettingsError, match=r"ORCHESTRATE_WORKERS: .*\(got 0\)"):
        load_settings()


def test_malformed_toml(clean_env):
    write_toml(clean_env, "workers = [\n")
    with pytest.raises(SettingsError, match=r"^cannot read settings: "):
        load_settings()
