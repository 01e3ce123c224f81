"""The CLI's composition root: settings, database, keyring and dispatcher, built lazily once."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from compliance import otp
from compliance.config import Settings, load_settings
from compliance.db import Database, utcnow
from compliance.dispatch import Dispatcher
from compliance.keyring import Keyring, load_keyring, refuse_development_keys
from compliance.logs import use_format
from compliance.operators import Operator, Role, authorize, identify

if TYPE_CHECKING:
    from compliance.sources.registry import Registry


STEP_UP = frozenset({Role.APPROVER, Role.ADMIN})  # actions that need --otp once enrolled


def _remember_otp(ctx: click.Context, _param: click.Parameter, value: str | None) -> None:
    if value is not None:
        ctx.ensure_object(App).otp = value


otp_option = click.option(
    "--otp",
    metavar="CODE",
    expose_value=False,
    callback=_remember_otp,
    help="One-time code from your authenticator app (operators who enrolled).",
)


@dataclass
class App:
    """Everything a command may need; each part is built on first use."""

    config_file: Path | None = None
    operator_override: str | None = None
    otp: str | None = None  # --otp of a step-up command
    overrides: dict[str, Any] = field(default_factory=dict)
    _cache: dict[str, Any] = field(default_factory=dict)

    def settings(self) -> Settings:
        if "settings" not in self._cache:
            settings = load_settings(config_file=self.config_file)
            if self.operator_override:
                settings = settings.with_overrides(operator=self.operator_override)
            if self.overrides:
                settings = settings.with_overrides(**self.overrides)
            use_format(settings.log_format)  # from here on, lines are in the chosen format
            self._cache["settings"] = settings
        return self._cache["settings"]  # type: ignore[no-any-return]

    def db(self) -> Database:
        """The control database; the embedded SQLite one is migrated automatically."""
        if "db" not in self._cache:
            db = Database.connect(self.settings())
            if self.settings().embedded:
                db.upgrade()
            self._cache["db"] = db
        return self._cache["db"]  # type: ignore[no-any-return]

    def keyring(self) -> Keyring:
        if "keyring" not in self._cache:
            self._cache["keyring"] = load_keyring(self.settings())
        return self._cache["keyring"]  # type: ignore[no-any-return]

    def service_keyring(self, insecure_dev_keys: bool) -> Keyring:
        """The keyring a long-running service (worker, download service) starts with: the
        development keyring is refused on a PostgreSQL control database (`ConfigError`)
        unless `insecure_dev_keys` (the services' ``--insecure-dev-keys``)."""
        settings = self.settings()
        keyring = load_keyring(settings, allow_development=insecure_dev_keys)
        refuse_development_keys(settings, keyring, insecure_dev_keys)
        self._cache["keyring"] = keyring
        return keyring

    def dispatcher(self) -> Dispatcher:
        if "dispatcher" not in self._cache:
            from tasks.app import configure
            from tasks.dispatch import CeleryDispatcher

            self._cache["dispatcher"] = CeleryDispatcher(configure(self.settings()))
        return self._cache["dispatcher"]  # type: ignore[no-any-return]

    def registry(self, *, connect: bool = True) -> Registry:
        """The data sources of the manifest, validated against the live systems; with
        `connect=False` only against the manifest itself (enough to know which identity
        types the sources answer). A live registry serves both."""
        live = self._cache.get("registry_live", True)  # one put in the cache counts as live
        if "registry" in self._cache and (live or not connect):
            return self._cache["registry"]  # type: ignore[no-any-return]
        from compliance.sources.registry import load_registry

        registry = load_registry(
            self.settings(),
            environ=os.environ,
            pseudonym_key=self.keyring().pseudonym_key,
            connect=connect,
        )
        self.close_registry()
        self._cache.update(registry=registry, registry_live=connect)
        return registry

    def close_registry(self) -> None:
        """Release the sources' connections (e.g. before a worker forks its children)."""
        registry = self._cache.pop("registry", None)
        self._cache.pop("registry_live", None)
        if registry is not None:
            registry.close()

    def acting(self) -> Operator:
        """Who runs this command (`compliance.operators.identify`), found once."""
        if "operator" not in self._cache:
            claimed = self.operator_override
            found = identify(self.db(), self.settings().operator, claimed)
            self._cache["operator"] = found
        return self._cache["operator"]  # type: ignore[no-any-return]

    def act(self, role: Role, action: str) -> str:
        """The acting operator's name, once they are found to hold `role` for `action`
        (else `PermissionDeniedError`, audited). Approving and admin actions also need
        the one-time code (`--otp`) of an operator who enrolled (`compliance.otp`)."""
        acting = self.acting()
        authorize(self.db(), acting, role, action, self.now())
        if role in STEP_UP:
            lockout = timedelta(minutes=self.settings().otp_lockout_minutes)
            otp.step_up(self.db(), self.keyring(), acting, self.otp, action, self.now(), lockout)
        return acting.name

    def operator(self) -> str:
        return self.acting().name

    def now(self) -> datetime:
        return utcnow()

    def close(self) -> None:
        db = self._cache.pop("db", None)
        if db is not None:
            db.dispose()
        self.close_registry()


def current() -> App:
    """The `App` of the running command."""
    return click.get_current_context().ensure_object(App)
