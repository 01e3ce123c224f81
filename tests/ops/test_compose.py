"""ops/docker-compose.yml, ops/Dockerfile and the systemd units run only what exists.

Every `gdpr ...` command they run is parsed by the CLI itself (subcommands, options and
option values, as `gdpr` would parse them, without running anything); what `gdpr worker` and
`gdpr beat` pass on to Celery is checked against Celery's own options. Every `GDPR_*`
variable they set is a setting of `compliance/config.py`, and the values load. The services
the worker, beat and download service reach (database, broker, storage) are declared and
started before them. Pure file checks: no Docker, no systemd.
"""

from __future__ import annotations

import re
import shlex
import tomllib
import warnings
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import click
import pytest
import yaml
from celery.bin.beat import beat as celery_beat
from celery.bin.worker import worker as celery_worker

from compliance.config import ENV_PREFIX, Settings, load_settings
from compliance.errors import ConfigError

OPS = Path(__file__).resolve().parents[2] / "ops"
COMPOSE = OPS / "docker-compose.yml"
DOCKERFILE = OPS / "Dockerfile"
UNITS = sorted((OPS / "systemd").glob("*.service"))
ENV_EXAMPLE = OPS / "gdpr.env.example"
PYPROJECT = OPS.parent / "pyproject.toml"

SETTING_NAMES = {f"{ENV_PREFIX}{name.upper()}" for name in Settings.__dataclass_fields__}
READ_BESIDE_SETTINGS = {f"{ENV_PREFIX}CONFIG"}  # the settings file's path (load_settings)
CELERY_COMMANDS: dict[str, click.Command] = {"worker": celery_worker, "beat": celery_beat}
URL_SETTINGS = ("GDPR_DATABASE_URL", "GDPR_BROKER_URL", "GDPR_S3_ENDPOINT_URL")
REACHES = {  # what each process connects to, so must wait for
    "migrate": ("GDPR_DATABASE_URL",),
    "worker": URL_SETTINGS,
    "beat": ("GDPR_BROKER_URL",),
    "serve": ("GDPR_DATABASE_URL", "GDPR_S3_ENDPOINT_URL"),
}
GDPR_SERVICES = ("migrate", "worker", "beat", "serve")


# --- the files, read -----------------------------------------------------------------------


def compose() -> dict[str, Any]:
    data = yaml.safe_load(COMPOSE.read_text(encoding="utf-8"))
    assert isinstance(data, dict)
    return data


def services() -> dict[str, dict[str, Any]]:
    found = compose()["services"]
    assert isinstance(found, dict)
    return found


def gdpr_image() -> str:
    """The image every service built from ops/Dockerfile runs."""
    built = {s["image"] for s in services().values() if _builds_dockerfile(s)}
    assert len(built) == 1, f"services built from ops/Dockerfile name {built or 'no'} image"
    return str(built.pop())


def _builds_dockerfile(service: Mapping[str, Any]) -> bool:
    build = service.get("build")
    return isinstance(build, dict) and build.get("dockerfile") == "ops/Dockerfile"


def gdpr_services() -> dict[str, dict[str, Any]]:
    """The services whose entry point is `gdpr` (the image of ops/Dockerfile)."""
    image = gdpr_image()
    return {
        name: s
        for name, s in services().items()
        if s.get("image") == image and "entrypoint" not in s
    }


def environment(service: Mapping[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {str(k): "" if v is None else str(v) for k, v in env.items()}


_INTERPOLATION = re.compile(r"\$\$|\$\{(\w+)(?:(:?[-?])([^}]*))?\}|\$(\w+)")


def interpolate(value: str) -> str:
    """`value` as Compose would pass it, for a host that sets only what is required: a
    default where the file gives one, a placeholder for a required variable."""

    def one(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        if match.group(2) in {"-", ":-"}:
            return match.group(3)
        return "placeholder"

    return _INTERPOLATION.sub(one, value)


def unit_lines(unit: Path, key: str) -> list[str]:
    prefix = f"{key}="
    lines = unit.read_text(encoding="utf-8").splitlines()
    return [line[len(prefix) :] for line in lines if line.startswith(prefix)]


def unit_command(exec_start: str) -> list[str]:
    """ExecStart= as systemd runs it for instance "1" (specifiers: %i, and %% for %)."""
    expanded = re.sub(r"%[%i]", lambda m: "%" if m.group(0) == "%%" else "1", exec_start)
    return shlex.split(expanded)


def env_file_names(path: Path) -> dict[str, str]:
    found = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            name, _, value = line.partition("=")
            found[name.strip()] = value
    return found


# --- the CLI, asked ------------------------------------------------------------------------


def parse_gdpr(args: list[str]) -> tuple[str, dict[str, Any]]:
    """Parse `gdpr ARGS` with the CLI's own click commands (every option and value checked,
    option callbacks run), invoking nothing; the command's path and its parameters."""
    from compliance.cli.main import cli

    command: click.Command = cli
    ctx = cli.make_context("gdpr", list(args))
    path = ["gdpr"]
    while isinstance(command, click.Group):
        rest = _unparsed(ctx)
        if not rest:
            raise click.UsageError(f"`{' '.join(path)}` needs a subcommand")
        sub = command.get_command(ctx, rest[0])
        if sub is None:
            raise click.UsageError(f"`{' '.join(path)}` has no command {rest[0]!r}")
        path.append(rest[0])
        command, ctx = sub, sub.make_context(rest[0], rest[1:], parent=ctx)
    if _unparsed(ctx):
        raise click.UsageError(f"`{' '.join(path)}` takes no arguments {_unparsed(ctx)}")
    return " ".join(path), ctx.params


def _unparsed(ctx: click.Context) -> list[str]:
    with warnings.catch_warnings():  # click 8.2+ folds protected_args into args
        warnings.simplefilter("ignore", DeprecationWarning)
        protected = list(getattr(ctx, "protected_args", []))
    return [*protected, *ctx.args]


def check_gdpr_command(args: list[str]) -> str:
    """The command's path; fails the test if the CLI, or Celery, would refuse `args`."""
    try:
        path, params = parse_gdpr(args)
    except click.ClickException as exc:
        pytest.fail(f"gdpr {' '.join(args)}: {exc.format_message()}")
    passed_on = params.get("celery_args", ())
    celery = CELERY_COMMANDS.get(path.split()[-1])
    if passed_on:
        assert celery is not None, f"{path} passes {passed_on} on, but to no Celery command"
        known = {opt for p in celery.params for opt in [*p.opts, *p.secondary_opts]}
        for token in passed_on:
            if token.startswith("-"):
                assert token.split("=", 1)[0] in known, f"celery {celery.name}: no {token}"
    return path


def compose_commands() -> Iterator[tuple[str, list[str]]]:
    for name, service in gdpr_services().items():
        command = service.get("command")
        assert command, f"service {name} runs gdpr with no command (the image's --help)"
        yield name, shlex.split(command) if isinstance(command, str) else list(command)


def unit_commands() -> Iterator[tuple[str, list[str]]]:
    for unit in UNITS:
        for line in unit_lines(unit, "ExecStart"):
            argv = unit_command(line)
            assert Path(argv[0]).name == "gdpr", f"{unit.name} runs {argv[0]}, not gdpr"
            yield unit.name, argv[1:]


# --- the parser itself ---------------------------------------------------------------------


def test_the_parser_refuses_what_gdpr_would_refuse() -> None:
    assert parse_gdpr(["worker", "-Q", "requests", "-n", "w1@%h"])[0] == "gdpr worker"
    for wrong in (
        ["wroker"],
        ["db"],
        ["db", "upgrade", "--force"],
        ["serve", "--port", "0"],
        ["worker", "-Q", "exports"],
        ["doctor", "extra"],
    ):
        with pytest.raises(click.ClickException):
            parse_gdpr(wrong)


def test_an_option_celery_does_not_have_fails_the_check() -> None:
    check_gdpr_command(["worker", "-n", "w1@%h", "--max-tasks-per-child", "100"])
    with pytest.raises(AssertionError, match="no --no-such-option"):
        check_gdpr_command(["worker", "--no-such-option"])


def test_interpolation_takes_defaults_and_fills_what_is_required() -> None:
    assert interpolate("a${X:-b}c${Y:?set Y}$${Z}") == "abcplaceholder${Z}"


# --- compose -------------------------------------------------------------------------------


def test_compose_runs_the_worker_beat_download_service_and_migration_from_one_image() -> None:
    commands = {name: check_gdpr_command(args) for name, args in compose_commands()}
    for name in GDPR_SERVICES:
        assert name in commands, f"no {name} service runs gdpr"
    assert commands["migrate"] == "gdpr db upgrade"
    assert commands["worker"] == "gdpr worker"
    assert commands["beat"] == "gdpr beat"
    assert commands["serve"] == "gdpr serve"


def test_compose_runs_beat_exactly_once() -> None:
    beats = [name for name, args in compose_commands() if args[:1] == ["beat"] or "--beat" in args]
    assert beats == ["beat"]
    replicas = services()["beat"].get("deploy", {}).get("replicas", 1)
    assert replicas == 1


def test_every_gdpr_variable_compose_sets_is_a_setting_and_loads(tmp_path: Path) -> None:
    empty = tmp_path / "gdpr.toml"
    empty.write_text("", encoding="utf-8")
    for name, service in gdpr_services().items():
        env = {k: interpolate(v) for k, v in environment(service).items()}
        gdpr_vars = {k: v for k, v in env.items() if k.startswith(ENV_PREFIX)}
        unknown = set(gdpr_vars) - SETTING_NAMES - READ_BESIDE_SETTINGS
        assert not unknown, f"service {name} sets {sorted(unknown)}: not settings"
        try:
            load_settings(environ=gdpr_vars, config_file=empty)
        except ConfigError as exc:
            pytest.fail(f"service {name}: {exc}")


def test_no_other_service_sets_gdpr_variables() -> None:
    for name, service in services().items():
        if name not in gdpr_services():
            assert not [k for k in environment(service) if k.startswith(ENV_PREFIX)], name


def test_every_service_gdpr_points_at_is_declared_and_started_before_what_needs_it() -> None:
    declared = services()
    for name, service in gdpr_services().items():
        env = {k: interpolate(v) for k, v in environment(service).items()}
        for setting in URL_SETTINGS:
            host = urlsplit(env.get(setting, "")).hostname
            assert host, f"service {name} sets no {setting}"
            assert host in declared, f"{name}: {setting} points at {host}, not a service"
            if setting in REACHES.get(name, ()):
                assert host in _depends_on(name), f"{name} does not wait for {host} ({setting})"


def test_the_worker_needs_a_database_a_broker_and_storage() -> None:
    env = {k: interpolate(v) for k, v in environment(services()["worker"]).items()}
    settings = load_settings(environ={k: v for k, v in env.items() if k.startswith("GDPR_")})
    assert settings.database_url.startswith("postgresql+psycopg://")
    assert settings.broker_url.startswith("redis://")
    assert settings.storage_url.startswith("s3://")
    assert {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"} <= set(env)


def test_the_bucket_of_the_storage_url_is_created_before_the_worker_starts() -> None:
    env = {k: interpolate(v) for k, v in environment(services()["worker"]).items()}
    bucket = urlsplit(env["GDPR_STORAGE_URL"]).netloc
    creators = [
        name
        for name, s in services().items()
        if f"mb --ignore-existing store/{bucket}" in " ".join(_as_list(s.get("command")))
    ]
    assert len(creators) == 1, f"no one-shot service creates bucket {bucket}"
    creator = creators[0]
    assert services()[creator].get("restart") == "no"
    for name in ("worker", "beat", "serve"):
        condition = _depends_on(name, direct=True).get(creator, {}).get("condition")
        assert condition == "service_completed_successfully", f"{name} ignores {creator}"


def test_the_control_database_is_migrated_before_workers_start() -> None:
    for name in ("worker", "beat", "serve"):
        condition = _depends_on(name, direct=True).get("migrate", {}).get("condition")
        assert condition == "service_completed_successfully", f"{name} starts before migrate"


def _as_list(command: Any) -> list[str]:
    if command is None:
        return []
    return [command] if isinstance(command, str) else [str(c) for c in command]


def _depends_on(name: str, *, direct: bool = False) -> dict[str, dict[str, Any]]:
    """The services `name` waits for (all of them, through theirs, unless `direct`)."""
    raw = services()[name].get("depends_on") or {}
    found = {d: {} for d in raw} if isinstance(raw, list) else dict(raw)
    if direct:
        return found
    for dependency in list(found):
        found.update({k: v for k, v in _depends_on(dependency).items() if k not in found})
    return found


# --- the Dockerfile ------------------------------------------------------------------------


def test_the_image_holds_every_part_of_the_wheel_and_runs_gdpr_unprivileged() -> None:
    text = DOCKERFILE.read_text(encoding="utf-8")
    wheel = tomllib.loads(PYPROJECT.read_text(encoding="utf-8"))
    included = wheel["tool"]["hatch"]["build"]["targets"]["wheel"]["only-include"]
    copied = {
        part.rstrip("/").lstrip("./")
        for line in text.splitlines()
        if line.startswith("COPY ")
        for part in line.split()[1:]
    }
    assert set(included) <= copied, f"ops/Dockerfile copies none of {set(included) - copied}"
    assert "RUN pip install ." in text
    users = [line.split()[1] for line in text.splitlines() if line.startswith("USER ")]
    assert users and users[-1] not in {"root", "0"}
    assert 'ENTRYPOINT ["gdpr"]' in text
    env_names = set(re.findall(r"\b(GDPR_\w+)=", text))
    assert env_names <= SETTING_NAMES, f"ops/Dockerfile sets {env_names - SETTING_NAMES}"


# --- systemd -------------------------------------------------------------------------------


def test_every_unit_runs_a_gdpr_command_the_cli_has() -> None:
    paths = {unit: check_gdpr_command(args) for unit, args in unit_commands()}
    assert paths == {
        "gdpr-beat.service": "gdpr beat",
        "gdpr-serve.service": "gdpr serve",
        "gdpr-worker@.service": "gdpr worker",
    }


def test_every_gdpr_variable_of_the_units_and_their_environment_file_is_a_setting(
    tmp_path: Path,
) -> None:
    empty = tmp_path / "gdpr.toml"
    empty.write_text("", encoding="utf-8")
    for unit in UNITS:
        assert unit_lines(unit, "EnvironmentFile") == ["/etc/gdpr/gdpr.env"], unit.name
        for line in unit_lines(unit, "Environment"):
            for assignment in shlex.split(line):
                name = assignment.split("=", 1)[0]
                if name.startswith(ENV_PREFIX):
                    assert name in SETTING_NAMES, f"{unit.name} sets {name}: not a setting"
    example = env_file_names(ENV_EXAMPLE)  # what /etc/gdpr/gdpr.env starts from
    assert set(example) <= SETTING_NAMES, f"{ENV_EXAMPLE.name}: {set(example) - SETTING_NAMES}"
    load_settings(environ=example, config_file=empty)
