"""Settings: declared once, documented, resolved with the right precedence, validated."""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path

import pytest

from tundra.core.errors import ConfigError
from tundra.core.settings import SETTINGS, Settings, load_settings

DOCS = Path(__file__).parents[3] / "docs" / "settings.md"


def test_every_setting_is_documented_with_its_variable() -> None:
    text = DOCS.read_text()
    for setting in SETTINGS:
        assert f"`{setting.name}`" in text, f"{setting.name} missing from docs/settings.md"
        assert f"`{setting.env}`" in text


def test_the_settings_page_is_generated_from_the_declarations() -> None:
    import runpy

    render = runpy.run_path(str(DOCS.parents[1] / "scripts" / "settings_doc.py"))["render"]
    assert DOCS.read_text() == render(), "docs/settings.md is stale: run `make docs`"


def test_declarations_and_the_settings_object_agree() -> None:
    declared = {s.name for s in SETTINGS}
    attributes = {f.name for f in fields(Settings)} - {"sources"}
    assert declared == attributes


def test_environment_beats_file_beats_default(tmp_path: Path) -> None:
    home = tmp_path / "h"
    home.mkdir()
    (home / "tundra.toml").write_text('token_env = "staging"\nreauth_window = 120\n')
    settings = load_settings({"TUNDRA_HOME": str(home), "TUNDRA_REAUTH_WINDOW": "60"})
    assert settings.token_env == "staging"
    assert settings.reauth_window == 60
    assert settings.sources["reauth_window"] == "TUNDRA_REAUTH_WINDOW"
    assert settings.hash_concurrency == 4
    assert settings.home == home


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"TUNDRA_TOKEN_ENV": "Live!"}, "token_env"),
        ({"TUNDRA_PASSWORD_PROFILE": "fast"}, "password_profile"),
        ({"TUNDRA_HASH_CONCURRENCY": "zero"}, "hash_concurrency"),
        ({"TUNDRA_REAUTH_WINDOW": "0"}, "reauth_window"),
        ({"TUNDRA_REQUIRE_ADMIN_TOTP": "maybe"}, "require_admin_totp"),
    ],
)
def test_bad_values_name_the_setting(tmp_path: Path, env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_settings({"TUNDRA_HOME": str(tmp_path), **env})


def test_unknown_key_in_a_settings_file_is_refused(tmp_path: Path) -> None:
    (tmp_path / "tundra.toml").write_text('databse_url = "postgresql://x"\n')
    with pytest.raises(ConfigError, match="databse_url"):
        load_settings({"TUNDRA_HOME": str(tmp_path)})


def test_malformed_settings_file_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "tundra.toml").write_text("this is = = not toml\n")
    with pytest.raises(ConfigError, match="cannot read settings file"):
        load_settings({"TUNDRA_HOME": str(tmp_path)})


def test_database_label_never_shows_a_password(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path, database_url="postgresql://u:hunter2@db/tundra")
    assert "hunter2" not in settings.database_label
