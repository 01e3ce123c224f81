"""Alert settings: malformed values stop the program at startup, in one line."""

from __future__ import annotations

import pytest

from compliance.alerts import channels
from compliance.config import Settings, load_settings
from compliance.errors import ConfigError


@pytest.mark.parametrize(
    ("env", "says"),
    [
        ({"GDPR_ALERT_WEBHOOK_URL": "ftp://hooks.example"}, "setting 'alert_webhook_url' has a"),
        ({"GDPR_ALERT_DIGEST_HOUR": "24"}, "setting 'alert_digest_hour' must be an hour"),
        (
            {"GDPR_ALERT_FAILED_STEPS_PER_HOUR": "0"},
            "setting 'alert_failed_steps_per_hour' must be at least 1",
        ),
        ({"GDPR_ALERT_EVERY_SECONDS": "five"}, "setting 'alert_every_seconds' must be a int"),
    ],
)
def test_a_malformed_alert_setting_is_refused_at_startup(env: dict[str, str], says: str) -> None:
    with pytest.raises(ConfigError, match=f"^{says}"):
        load_settings(env)


def test_the_webhook_url_never_shows_in_the_settings_repr() -> None:
    settings = Settings(alert_webhook_url="https://hooks.example/T0/B0/s3cret")
    assert "s3cret" not in repr(settings)


def test_the_channels_are_those_configured_and_recipients_are_a_list() -> None:
    assert channels.configured(Settings()) == []
    both = Settings(
        alert_email_to=" oncall@example.com,dpo@example.com ",
        alert_webhook_url="https://h.example/x",
    )
    found = channels.configured(both)
    assert [c.name for c in found] == ["email", "webhook"]
    assert found[0].recipients == ("oncall@example.com", "dpo@example.com")  # type: ignore[attr-defined]
