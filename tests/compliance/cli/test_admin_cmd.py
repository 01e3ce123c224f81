from __future__ import annotations

import pytest
from click.testing import CliRunner

from compliance.cli.main import cli
from compliance.keyring import parse_keys


def test_keys_generate_prints_lines_that_load_as_a_keyring() -> None:
    result = CliRunner().invoke(cli, ["keys", "generate", "--key-id", "2026-01"])
    assert result.exit_code == 0, result.output
    keys_line = result.stdout.splitlines()[0]
    assert list(parse_keys(keys_line.removeprefix("GDPR_KEYS="), "GDPR_KEYS")) == ["2026-01"]


@pytest.mark.parametrize("key_id", ["a:b", "a,b", "", " k1", "k" * 65, "clé"])
def test_keys_generate_refuses_a_key_id_the_keyring_could_not_read(key_id: str) -> None:
    result = CliRunner().invoke(cli, ["keys", "generate", "--key-id", key_id])
    assert result.exit_code == 2
    assert result.stdout == ""
    assert result.stderr.count("\n") == 1 and "key id" in result.stderr
