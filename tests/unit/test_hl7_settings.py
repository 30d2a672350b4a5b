"""Settings of the HL7 listener: port (off disables it), host (the HTTP host by default) and the
maximum message size, as read from the environment."""

from __future__ import annotations

import pytest

from pacs.config import ConfigError, Settings


def test_defaults() -> None:
    settings = Settings.from_env({})
    assert (settings.hl7_enabled, settings.hl7_port, settings.hl7_max_message_bytes) == (True, 2575, 16 * 1024 * 1024)
    assert settings.effective_hl7_host == "127.0.0.1"
    assert Settings.from_env({"MINIPACS_HTTP_HOST": "0.0.0.0"}).effective_hl7_host == "0.0.0.0"


def test_from_the_environment() -> None:
    settings = Settings.from_env({"MINIPACS_HL7_PORT": "2600", "MINIPACS_HL7_HOST": "10.0.0.5",
                                  "MINIPACS_HL7_MAX_MESSAGE_BYTES": "1048576"})
    assert (settings.hl7_port, settings.effective_hl7_host, settings.hl7_max_message_bytes) == (2600, "10.0.0.5", 1048576)


@pytest.mark.parametrize("value", ["off", "OFF", " off "])
def test_port_off_disables_the_listener(value: str) -> None:
    assert not Settings.from_env({"MINIPACS_HL7_PORT": value}).hl7_enabled
    assert not Settings.from_mapping({"hl7_port": value}).hl7_enabled  # the TOML file too


@pytest.mark.parametrize("name, value, words", [
    ("MINIPACS_HL7_PORT", "70000", "MINIPACS_HL7_PORT must be a TCP port"),
    ("MINIPACS_HL7_PORT", "two", "MINIPACS_HL7_PORT must be an integer"),
    ("MINIPACS_HL7_MAX_MESSAGE_BYTES", "100", "at least 1024"),
])
def test_bad_values_name_the_variable(name: str, value: str, words: str) -> None:
    with pytest.raises(ConfigError, match=words):
        Settings.from_env({name: value})
