from __future__ import annotations

from pathlib import Path

import pytest

from compliance.config import load_settings
from compliance.errors import ConfigError


def test_defaults_are_embedded_and_need_no_servers(tmp_path: Path) -> None:
    settings = load_settings({"GDPR_HOME": str(tmp_path)})
    assert settings.embedded
    assert settings.control_url == f"sqlite:///{tmp_path / 'control.db'}"
    assert settings.broker.startswith("sqla+sqlite:///")
    assert settings.storage.startswith("file://")
    assert settings.mail.startswith("file://")


def test_environment_overrides_the_config_file(tmp_path: Path) -> None:
    config = tmp_path / "gdpr.toml"
    config.write_text('[gdpr]\nlink_ttl_days = 3\nfour_eyes = false\noperator = "file"\n')
    settings = load_settings({"GDPR_OPERATOR": "env"}, config_file=config)
    assert (settings.link_ttl_days, settings.four_eyes, settings.operator) == (3, False, "env")


def test_unknown_environment_variable_is_an_error() -> None:
    with pytest.raises(ConfigError, match="unknown environment variable GDPR_DATABSE_URL"):
        load_settings({"GDPR_DATABSE_URL": "sqlite://"})


def test_unknown_config_file_key_is_an_error(tmp_path: Path) -> None:
    config = tmp_path / "gdpr.toml"
    config.write_text("[gdpr]\nlink_ttl = 3\n")
    with pytest.raises(ConfigError, match="unknown setting 'link_ttl'"):
        load_settings({}, config_file=config)


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("GDPR_DATABASE_URL", "mysql://x/y"),
        ("GDPR_BROKER_URL", "redis:/nohost"),
        ("GDPR_STORAGE_URL", "ftp://bucket"),
        ("GDPR_MAIL_URL", "smtp://"),
    ],
)
def test_malformed_urls_are_refused_at_startup(name: str, value: str) -> None:
    with pytest.raises(ConfigError, match=name[5:].lower()):
        load_settings({name: value})


def test_malformed_numbers_and_booleans_are_refused() -> None:
    with pytest.raises(ConfigError, match="link_ttl_days"):
        load_settings({"GDPR_LINK_TTL_DAYS": "seven"})
    with pytest.raises(ConfigError, match="four_eyes"):
        load_settings({"GDPR_FOUR_EYES": "maybe"})


def test_missing_explicit_config_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_settings({"GDPR_CONFIG": str(tmp_path / "nope.toml")})


def test_unknown_timezone_is_refused() -> None:
    with pytest.raises(ConfigError, match="time zone"):
        load_settings({"GDPR_TIMEZONE": "Mars/Olympus"})


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("GDPR_RATE_LIMIT_PER_MINUTE", "0"),
        ("GDPR_SERVE_PORT", "99999"),
        ("GDPR_LEASE_SECONDS", "1"),
        ("GDPR_REDISPATCH_AFTER_SECONDS", "-5"),
        ("GDPR_LOCK_TIMEOUT_MS", "-1"),
        ("GDPR_STATEMENT_TIMEOUT_MS", "-1"),
    ],
)
def test_numbers_out_of_range_are_refused_at_startup(name: str, value: str) -> None:
    with pytest.raises(ConfigError, match=name[5:].lower()):
        load_settings({name: value})


@pytest.mark.parametrize("name", ["GDPR_BASE_URL", "GDPR_DATABASE_URL", "GDPR_S3_ENDPOINT_URL"])
def test_an_unparsable_url_is_a_config_error_that_does_not_echo_it(name: str) -> None:
    with pytest.raises(ConfigError, match=name[5:].lower()) as caught:
        load_settings({name: "http://user:s3cret@[::1/x"})
    assert "s3cret" not in str(caught.value)


def test_passwords_in_urls_and_secrets_never_appear_in_the_settings_repr() -> None:
    settings = load_settings(
        {
            "GDPR_DATABASE_URL": "postgresql+psycopg://gdpr:pg-s3cret@db.internal:5432/gdpr",
            "GDPR_BROKER_URL": "redis://:redis-s3cret@cache.internal:6379/0",
            "GDPR_MAIL_URL": "smtp://mailer:mail-s3cret@smtp.internal:587",
            "GDPR_MAIL_PASSWORD": "other-s3cret",
            "GDPR_KEYS": "k1:" + "A" * 44,
            "GDPR_PSEUDONYM_KEY": "B" * 44,
        }
    )
    shown = repr(settings) + str(settings)
    for secret in ("pg-s3cret", "redis-s3cret", "mail-s3cret", "other-s3cret", "A" * 44, "B" * 44):
        assert secret not in shown
    assert "db.internal" in shown and "gdpr:***@" in shown
    assert settings.database_url.endswith("pg-s3cret@db.internal:5432/gdpr")  # value intact


def test_a_fraction_or_boolean_for_a_whole_number_is_refused_not_truncated(tmp_path: Path) -> None:
    config = tmp_path / "gdpr.toml"
    config.write_text("[gdpr]\nlink_ttl_days = 2.5\n")
    with pytest.raises(ConfigError, match="link_ttl_days"):
        load_settings({}, config_file=config)
    config.write_text("[gdpr]\nbatch_size = true\n")
    with pytest.raises(ConfigError, match="batch_size"):
        load_settings({}, config_file=config)


def test_trusted_proxy_must_be_an_ip_address() -> None:
    assert load_settings({"GDPR_TRUSTED_PROXY": "10.0.0.5"}).trusted_proxy == "10.0.0.5"
    with pytest.raises(ConfigError, match="trusted_proxy"):
        load_settings({"GDPR_TRUSTED_PROXY": "*"})


@pytest.mark.parametrize(
    ("environ", "message"),
    [
        ({"GDPR_LOG_FORMAT": "yaml"}, "setting 'log_format' must be 'text' or 'json', not 'yaml'"),
        ({"GDPR_METRICS_PORT": "70000"}, "setting 'metrics_port' must be between 0 (off)"),
        ({"GDPR_SERVE_METRICS_PORT": "8080"}, "must differ from 'serve_port'"),
        ({"GDPR_METRICS_PORT": "9101", "GDPR_SERVE_METRICS_PORT": "9101"}, "must differ"),
        ({"GDPR_METRICS_HOST": " "}, "setting 'metrics_host' must be an interface"),
    ],
    ids=["log-format", "port-range", "public-port", "same-port", "no-host"],
)
def test_log_and_metrics_settings_are_checked_at_startup(
    environ: dict[str, str], message: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings(environ)
    assert message in str(caught.value)
    assert "\n" not in str(caught.value)


def test_metrics_are_off_and_logs_are_text_by_default() -> None:
    settings = load_settings({})
    assert (settings.metrics_port, settings.serve_metrics_port) == (0, 0)
    assert (settings.log_format, settings.metrics_host) == ("text", "127.0.0.1")
