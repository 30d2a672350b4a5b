"""Settings: defaults, environment names, the TOML file, and the errors that name the setting."""

from __future__ import annotations

from pathlib import Path

import pytest

from pacs.config import ConfigError, Settings


def test_defaults() -> None:
    settings = Settings.from_env({})
    assert settings.data_dir == Path("./minipacs-data")
    assert (settings.http_host, settings.http_port) == ("127.0.0.1", 8042)
    assert settings.dicom_port == 11112
    assert settings.ae_title == "MINIPACS"
    assert settings.duplicate_policy == "keep"
    assert settings.auth == "on"
    assert settings.cors_origins == ()
    assert settings.s3_endpoint_url is None
    assert (settings.qido_default_limit, settings.qido_max_limit) == (100, 1000)


def test_default_index_and_storage_live_under_the_data_dir(tmp_path: Path) -> None:
    settings = Settings.from_env({"MINIPACS_DATA_DIR": str(tmp_path / "pacs")})
    assert settings.data_dir == tmp_path / "pacs"
    assert settings.effective_database_url == f"sqlite:///{tmp_path / 'pacs' / 'index.sqlite3'}"
    assert settings.effective_storage_url == (tmp_path / "pacs" / "storage").as_uri()
    assert settings.is_embedded


def test_relative_data_dir_resolves_against_the_working_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    settings = Settings.from_env({"MINIPACS_DATA_DIR": "rel"})
    assert settings.effective_database_url == f"sqlite:///{tmp_path / 'rel' / 'index.sqlite3'}"
    assert settings.effective_storage_url == f"file://{tmp_path / 'rel' / 'storage'}"


ENVIRONMENT = {
    "MINIPACS_DATA_DIR": "/srv/pacs",
    "MINIPACS_DATABASE_URL": "postgresql+psycopg://pacs:pw@db:5432/pacs",
    "MINIPACS_STORAGE_URL": "s3://images/archive",
    "MINIPACS_S3_ENDPOINT_URL": "http://minio:9000",
    "MINIPACS_HTTP_HOST": "0.0.0.0",
    "MINIPACS_HTTP_PORT": "9000",
    "MINIPACS_DICOM_PORT": "4242",
    "MINIPACS_AE_TITLE": "HOSPITAL_PACS",
    "MINIPACS_AUTH": "off",
    "MINIPACS_CORS_ORIGINS": "https://viewer.example.org, http://localhost:3000,",
    "MINIPACS_QIDO_MAX_LIMIT": "5000",
}


def test_every_documented_variable_is_read() -> None:
    settings = Settings.from_env(ENVIRONMENT)
    assert settings.data_dir == Path("/srv/pacs")
    assert settings.database_url == "postgresql+psycopg://pacs:pw@db:5432/pacs"
    assert settings.effective_database_url == settings.database_url
    assert not settings.is_embedded
    assert settings.storage_url == settings.effective_storage_url == "s3://images/archive"
    assert settings.s3_endpoint_url == "http://minio:9000"
    assert settings.http_host == "0.0.0.0"
    assert settings.http_port == 9000
    assert settings.dicom_port == 4242
    assert settings.ae_title == "HOSPITAL_PACS"
    assert settings.auth == "off"
    assert settings.cors_origins == ("https://viewer.example.org", "http://localhost:3000")
    assert settings.qido_max_limit == 5000
    assert settings.extra == {}


def test_only_minipacs_variables_are_read() -> None:
    settings = Settings.from_env({"HTTP_PORT": "1", "PORT": "2", "minipacs_http_port": "3"})
    assert settings.http_port == 8042


def test_from_env_reads_os_environ_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MINIPACS_AE_TITLE", "FROM_ENV")
    assert Settings.from_env().ae_title == "FROM_ENV"


@pytest.mark.parametrize(("raw", "expected"), [("on", "on"), ("TRUE", "on"), ("1", "on"), ("no", "off"), ("Off", "off")])
def test_auth_spellings(raw: str, expected: str) -> None:
    assert Settings.from_env({"MINIPACS_AUTH": raw}).auth == expected


@pytest.mark.parametrize(("raw", "expected"), [("off", False), ("0", False), ("yes", True), ("ON", True)])
def test_on_off_settings(raw: str, expected: bool) -> None:
    assert Settings.from_env({"MINIPACS_DICOM_ENABLED": raw}).dicom_enabled is expected


def test_duplicate_policy_is_case_insensitive() -> None:
    assert Settings.from_env({"MINIPACS_DUPLICATE_POLICY": " Overwrite "}).duplicate_policy == "overwrite"


# ---- the TOML file --------------------------------------------------------------------------------


def _toml(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "minipacs.toml"
    path.write_text(text)
    return path


TOML = """
data_dir = "/var/lib/minipacs"
http_port = 8100
dicom_port = 11200
ae_title = "FROM_FILE"
auth = false
cors_origins = ["https://a.example", "https://b.example"]
duplicate_policy = "reject"
"""


def test_toml_file_values(tmp_path: Path) -> None:
    settings = Settings.from_env({}, config_file=_toml(tmp_path, TOML))
    assert settings.data_dir == Path("/var/lib/minipacs")
    assert (settings.http_port, settings.dicom_port) == (8100, 11200)
    assert settings.ae_title == "FROM_FILE"
    assert settings.auth == "off"
    assert settings.cors_origins == ("https://a.example", "https://b.example")
    assert settings.duplicate_policy == "reject"


def test_environment_overrides_the_toml_file(tmp_path: Path) -> None:
    path = _toml(tmp_path, TOML)
    settings = Settings.from_env({"MINIPACS_CONFIG": str(path), "MINIPACS_HTTP_PORT": "8200", "MINIPACS_AUTH": "on"})
    assert settings.http_port == 8200  # from the environment
    assert settings.auth == "on"
    assert settings.dicom_port == 11200  # from the file
    assert settings.ae_title == "FROM_FILE"


def test_explicit_config_file_wins_over_minipacs_config(tmp_path: Path) -> None:
    named = _toml(tmp_path, 'ae_title = "NAMED"\n')
    other = tmp_path / "other.toml"
    other.write_text('ae_title = "OTHER"\n')
    assert Settings.from_env({"MINIPACS_CONFIG": str(other)}, config_file=named).ae_title == "NAMED"


def test_toml_keys_are_case_insensitive(tmp_path: Path) -> None:
    assert Settings.from_env({}, config_file=_toml(tmp_path, "HTTP_PORT = 9100\n")).http_port == 9100


def test_unknown_keys_are_kept_aside(tmp_path: Path) -> None:
    settings = Settings.from_env({"MINIPACS_SOMETHING_NEW": "x"}, config_file=_toml(tmp_path, 'future_option = 3\n'))
    assert settings.extra == {"something_new": "x", "future_option": 3}


# ---- errors ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("MINIPACS_DUPLICATE_POLICY", "sometimes"),
        ("MINIPACS_HTTP_PORT", "abc"),
        ("MINIPACS_HTTP_PORT", "65536"),
        ("MINIPACS_DICOM_PORT", "-5"),
        ("MINIPACS_QIDO_MAX_LIMIT", "lots"),
        ("MINIPACS_QIDO_DEFAULT_LIMIT", "0"),
        ("MINIPACS_QIDO_MAX_LIMIT", "0"),
        ("MINIPACS_AUTH", "maybe"),
        ("MINIPACS_AE_TITLE", "SEVENTEEN_CHARS_X"),
        ("MINIPACS_AE_TITLE", "   "),
        ("MINIPACS_DICOM_ENABLED", "maybe"),
    ],
)
def test_bad_values_name_the_variable(name: str, value: str) -> None:
    with pytest.raises(ConfigError, match=name):
        Settings.from_env({name: value})


def test_non_integer_message_is_readable() -> None:
    with pytest.raises(ConfigError) as caught:
        Settings.from_env({"MINIPACS_HTTP_PORT": "abc"})
    assert str(caught.value) == "MINIPACS_HTTP_PORT must be an integer, not 'abc'"


def test_bad_value_in_the_toml_file_names_the_setting(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="MINIPACS_HTTP_PORT"):
        Settings.from_env({}, config_file=_toml(tmp_path, 'http_port = "eighty"\n'))


def test_broken_or_missing_toml_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="minipacs.toml"):
        Settings.from_env({}, config_file=_toml(tmp_path, "http_port = = 1\n"))
    with pytest.raises(ConfigError, match="missing.toml"):
        Settings.from_env({"MINIPACS_CONFIG": str(tmp_path / "missing.toml")})


def test_lower_max_limit_alone_is_accepted() -> None:
    # Only the ceiling was set: the default page size follows it down rather than failing.
    settings = Settings.from_env({"MINIPACS_QIDO_MAX_LIMIT": "50"})
    assert (settings.qido_default_limit, settings.qido_max_limit) == (50, 50)
    with pytest.raises(ConfigError, match="MINIPACS_QIDO_DEFAULT_LIMIT"):
        Settings.from_env({"MINIPACS_QIDO_MAX_LIMIT": "50", "MINIPACS_QIDO_DEFAULT_LIMIT": "60"})


def test_replace_validates() -> None:
    settings = Settings.from_env({})
    assert settings.replace(duplicate_policy="overwrite").duplicate_policy == "overwrite"
    with pytest.raises(ConfigError, match="MINIPACS_DUPLICATE_POLICY"):
        settings.replace(duplicate_policy="sometimes")


def test_settings_are_frozen() -> None:
    settings = Settings.from_env({})
    with pytest.raises(AttributeError):
        settings.http_port = 1  # type: ignore[misc]


@pytest.mark.parametrize("title", ["ÜBER", "A\\B", "X" * 17, "   "])
def test_ae_title_must_be_printable_ascii_without_backslash(title: str) -> None:
    with pytest.raises(ConfigError, match="MINIPACS_AE_TITLE"):
        Settings.from_mapping({"ae_title": title})
