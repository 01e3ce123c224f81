"""Shared options naming a data subject: --email, --user-id, --phone, --customer-id,
--identity; and --contact, the one address a request writes to."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import click

from compliance.errors import ValidationError
from compliance.identities import Identities, Identity, IdentityType, parse_identity

F = TypeVar("F", bound=Callable[..., Any])

_OPTIONS = [
    ("--email", IdentityType.EMAIL, "The subject's email address."),
    ("--user-id", IdentityType.USER_ID, "The subject's user id in our systems."),
    ("--phone", IdentityType.PHONE, "The subject's phone number, international format."),
    ("--customer-id", IdentityType.CUSTOMER_ID, "The subject's customer id."),
]


def identity_options(func: F) -> F:
    """Decorate a command with the identity options (each may repeat)."""
    func = click.option(
        "--identity",
        "custom",
        multiple=True,
        metavar="TYPE=VALUE",
        help="Any identity type, e.g. custom:loyalty_no=123 (repeatable).",
    )(func)
    for flag, kind, text in reversed(_OPTIONS):
        func = click.option(flag, kind.value, multiple=True, help=text)(func)
    return func


def contact_option(func: F) -> F:
    """Decorate a submitting command with --contact."""
    return click.option(
        "--contact",
        metavar="EMAIL",
        help="The address to write to (the download link, the receipt) when several"
        " --email are given; one of them.",
    )(func)


def contact_from(options: dict[str, Any]) -> Identity | None:
    """The --contact address, validated and normalised like --email; None if not given."""
    text = options.pop("contact", None)
    return None if text is None else parse_identity(IdentityType.EMAIL.value, text)


def identities_from(options: dict[str, Any]) -> Identities:
    """Validate and normalise every identity given on the command line."""
    found: list[Identity] = []
    for _, kind, _ in _OPTIONS:
        found.extend(parse_identity(kind.value, value) for value in options.pop(kind.value, ()))
    for pair in options.pop("custom", ()):
        kind_text, sep, value = pair.partition("=")
        if not sep:
            raise ValidationError("--identity needs TYPE=VALUE, e.g. custom:loyalty_no=123")
        found.append(parse_identity(kind_text.strip(), value))
    if not found:
        raise ValidationError("name the subject with at least one identity, e.g. --email")
    return Identities.of(found)
