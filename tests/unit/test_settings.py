"""Settings: environment over the config file over defaults; a saved key stays with its server."""

import os
import stat

import pytest

from runstream.run_settings import RunSettings
from runstream.settings import Settings, write_config


def test_the_environment_wins_over_the_config_file(tmp_path):
    config = tmp_path / "config.toml"
    write_config(config, {"url": "http://tracker:8080", "crash_timeout": "30"})
    assert stat.S_IMODE(os.stat(config).st_mode) == 0o600  # it may hold a key
    settings = Settings.from_env({}, config=config)
    assert settings.url == "http://tracker:8080" and settings.crash_timeout == 30
    settings = Settings.from_env({"RUNSTREAM_URL": "http://other:9000"}, config=config)
    assert settings.url == "http://other:9000" and settings.crash_timeout == 30
    assert Settings.from_env({}, config=tmp_path / "missing.toml").url == Settings().url


def test_a_saved_key_goes_only_to_its_own_server(tmp_path):
    config = tmp_path / "config.toml"
    write_config(config, {"url": "http://tracker:8080", "api_key": "rs_saved"})
    saved = Settings.from_env({}, config=config)
    assert saved.key_for("http://tracker:8080/") == "rs_saved"
    assert saved.key_for("http://127.0.0.1:8080") == ""
    elsewhere = Settings.from_env({"RUNSTREAM_URL": "http://127.0.0.1:8080"}, config=config)
    assert elsewhere.key_for(elsewhere.url) == ""
    # A key from the environment is the user's explicit choice for whatever URL is in use.
    explicit = Settings.from_env(
        {"RUNSTREAM_URL": "http://127.0.0.1:8080", "RUNSTREAM_API_KEY": "rs_env"}, config=config
    )
    assert explicit.key_for(explicit.url) == "rs_env"


def test_runs_send_a_saved_key_only_to_its_server(tmp_path, monkeypatch):
    config = tmp_path / "config.toml"
    write_config(config, {"url": "http://tracker:8080", "api_key": "rs_saved"})
    monkeypatch.setenv("RUNSTREAM_CONFIG", str(config))
    monkeypatch.delenv("RUNSTREAM_URL", raising=False)
    monkeypatch.delenv("RUNSTREAM_API_KEY", raising=False)
    assert RunSettings.resolve(None).api_key == "rs_saved"
    assert RunSettings.resolve({"url": "http://elsewhere:8080"}).api_key == ""
    assert RunSettings.resolve({"url": "http://elsewhere:8080", "api_key": "rs_given"}).api_key == "rs_given"


def test_a_bad_value_names_where_it_came_from(tmp_path):
    config = tmp_path / "config.toml"
    write_config(config, {"port": "eighty"})
    with pytest.raises(ValueError, match=f"port in {config}"):
        Settings.from_env({}, config=config)
    with pytest.raises(ValueError, match="RUNSTREAM_PORT"):
        Settings.from_env({"RUNSTREAM_PORT": "x"}, config=config)
    config.write_text("url = [unclosed")
    with pytest.raises(ValueError, match="fix or delete it"):
        Settings.from_env({}, config=config)
