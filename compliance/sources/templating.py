"""Identity templates (``avatars/{user_id}/``) and the spec helpers the connectors share.

A template names identity types in braces. Expanding it for a subject yields one concrete
string per combination of the subject's values; a template whose identity is absent
expands to nothing (the location is skipped). Every value is escaped for its target
first, so a value can never widen what a template matches:

- `escape_glob`: Redis glob characters (``* ? [ ] \\``) become literals;
- `escape_s3_segment`: a value containing ``/`` or ``..`` is refused (matches nothing);
- `escape_url_segment`: percent-encoded, ``/`` included.

Expanded strings contain personal data: they go to the source and nowhere else. Logs,
errors, plans and checkpoints name the template (`Template.text`) or an index instead.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import quote

from compliance.config import Settings
from compliance.errors import ManifestError, ValidationError
from compliance.identities import Identities, validate_type
from compliance.sources.base import Art15

T = TypeVar("T")
Escape = Callable[[str], str | None]  # None: the value is refused and matches nothing

_FIELD = re.compile(r"\{([^{}]*)\}")
_ENV = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
_GLOB_SPECIAL = re.compile(r"([\\*?\[\]])")
ART15_KEYS = frozenset(
    {"description", "purpose", "legal_basis", "recipients", "retention", "origin"}
)


@dataclass(frozen=True)
class Template:
    """A parsed template: its text (safe to log) and the identity types it names."""

    text: str
    fields: tuple[str, ...]

    def literal_parts(self) -> list[str]:
        """The text between the fields (what the manifest author wrote verbatim)."""
        return _FIELD.split(self.text)[::2]

    def expand(self, identities: Identities, escape: Escape) -> list[str]:
        """One string per combination of values; [] when an identity type is absent.
        A combination with a refused value (escape gives None) is left out."""
        filled = (self.fill(combo, escape) for combo in combinations(self.fields, identities))
        return [text for text in filled if text is not None]

    def fill(self, values: Mapping[str, str], escape: Escape) -> str | None:
        """The template with each field replaced by its escaped value; None if refused."""
        escaped = {name: escape(values[name]) for name in self.fields}
        if any(value is None for value in escaped.values()):
            return None
        return _FIELD.sub(lambda m: escaped[m.group(1)] or "", self.text)


def combinations(fields: Iterable[str], identities: Identities) -> list[dict[str, str]]:
    """Every assignment of the subject's values to `fields`; [] if one type is absent."""
    names = list(dict.fromkeys(fields))
    choices = [identities.values(name) for name in names]
    return [dict(zip(names, combo, strict=True)) for combo in itertools.product(*choices)]


def parse_template(text: Any, where: str, *, require_field: bool = True) -> Template:
    """Parse `text`; `where` (``sources.cache.patterns[0]``) names it in errors."""
    if not isinstance(text, str) or not text:
        raise ManifestError(f"{where} must be a non-empty string like 'cart:{{user_id}}'")
    fields = tuple(_FIELD.findall(text))
    rest = _FIELD.sub("", text)
    if "{" in rest or "}" in rest:
        raise ManifestError(f"{where} has an unbalanced brace; write fields as {{user_id}}")
    for name in fields:
        try:
            validate_type(name)
        except ValidationError as exc:
            raise ManifestError(f"{where} names an {exc}") from exc
    if require_field and not fields:
        raise ManifestError(
            f"{where} names no identity, so it would match every subject; "
            "add a field such as {user_id} or {email}"
        )
    return Template(text, fields)


# --- escaping per target ----------------------------------------------------------------


def escape_glob(value: str) -> str | None:
    """A Redis MATCH pattern matching `value` literally."""
    return _GLOB_SPECIAL.sub(r"\\\1", value)


def escape_s3_segment(value: str) -> str | None:
    """`value` as one key segment; refused if it could reach outside its prefix."""
    if not value or "/" in value or ".." in value or "\\" in value:
        return None
    return value


def escape_url_segment(value: str) -> str | None:
    """`value` percent-encoded as one URL path segment."""
    return quote(value, safe="") or None


def is_glob(text: str) -> bool:
    """True when `text` holds an unescaped Redis glob character."""
    return bool(re.search(r"(?<!\\)[*?\[]", text))


# --- spec helpers ------------------------------------------------------------------------


def check_keys(spec: Mapping[str, Any], allowed: Iterable[str], where: str) -> None:
    """Refuse keys a connector does not know (a typo must not silently do nothing)."""
    known = set(allowed)
    for key in spec:
        if key not in known:
            names = ", ".join(sorted(known))
            raise ManifestError(f"{where}.{key} is not a known setting; use one of: {names}")


def require_str(spec: Mapping[str, Any], key: str, where: str, example: str) -> str:
    value = spec.get(key)
    if not isinstance(value, str) or not value.strip():
        raise ManifestError(f"{where}.{key} is missing or empty; set it, e.g. {key} = {example}")
    return value.strip()


def optional_number(
    spec: Mapping[str, Any], key: str, where: str, default: float, *, minimum: float = 0
) -> float:
    value = spec.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float) or value < minimum:
        raise ManifestError(f"{where}.{key} must be a number of at least {minimum}")
    return float(value)


def art15(spec: Mapping[str, Any], where: str, base: Art15 | None = None) -> Art15:
    """Art. 15 metadata from `spec`; keys it does not set are inherited from `base`."""
    base = base or Art15()
    values: dict[str, Any] = {}
    for key in ART15_KEYS & set(spec):
        value = spec[key]
        if key == "recipients":
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise ManifestError(f"{where}.recipients must be a list of strings")
            values[key] = tuple(value)
        elif isinstance(value, str):
            values[key] = value
        else:
            raise ManifestError(f"{where}.{key} must be a string")
    return Art15(
        description=values.get("description", base.description),
        purpose=values.get("purpose", base.purpose),
        legal_basis=values.get("legal_basis", base.legal_basis),
        recipients=values.get("recipients", base.recipients),
        retention=values.get("retention", base.retention),
        origin=values.get("origin", base.origin),
    )


@dataclass(frozen=True)
class Location:
    """One templated location of a source (a prefix, a key pattern) with its metadata."""

    template: Template
    meta: Art15


def facts_by_template(locations: Iterable[Location]) -> dict[str, Art15]:
    """Per template text, the Art. 15 facts of each location (`sources.base.Describing`)."""
    return {loc.template.text: loc.meta for loc in locations}


def parse_locations(
    spec: Mapping[str, Any], key: str, item_key: str, where: str, base: Art15
) -> tuple[Location, ...]:
    """`key = ["a/{user_id}/", { <item_key> = "b/{email}/", purpose = "..." }]`."""
    items = spec.get(key)
    example = f'{key} = ["...{{user_id}}..."]'
    if not isinstance(items, list) or not items:
        raise ManifestError(f"{where}.{key} is missing or empty; set it, e.g. {example}")
    out = []
    for i, item in enumerate(items):
        here = f"{where}.{key}[{i}]"
        if isinstance(item, Mapping):
            check_keys(item, {item_key} | ART15_KEYS, here)
            out.append(
                Location(
                    parse_template(item.get(item_key), f"{here}.{item_key}"),
                    art15(item, here, base),
                )
            )
        else:
            out.append(Location(parse_template(item, here), base))
    return tuple(out)


# --- registry adapter -----------------------------------------------------------------------


def manifest_factory(
    build: Callable[[str, Mapping[str, Any], Settings], T],
) -> Callable[[str, Any, Any], T]:
    """Adapt ``build(name, spec, settings)`` to a registry that passes a manifest `Spec`
    (``.data``, ``.raw(key)``) and a load context (``.settings``, ``.environ``): drops
    `kind`, marks every key read, and expands ``${VAR}`` from the context's environment."""

    def from_manifest(name: str, spec: Any, ctx: Any) -> T:
        data = {
            key: expand_env(spec.raw(key), ctx.environ, f"sources.{name}.{key}")
            for key in list(spec.data)
            if key != "kind"
        }
        return build(name, data, ctx.settings)

    return from_manifest


def expand_env(value: Any, environ: Mapping[str, str], where: str) -> Any:
    """Replace ``${VAR}`` in strings (also inside tables and lists); unset is an error."""
    if isinstance(value, str):

        def sub(match: re.Match[str]) -> str:
            if match.group(1) not in environ:
                raise ManifestError(f"{where} uses ${{{match.group(1)}}}, which is unset; set it")
            return environ[match.group(1)]

        return _ENV.sub(sub, value)
    if isinstance(value, Mapping):
        return {k: expand_env(v, environ, f"{where}.{k}") for k, v in value.items()}
    if isinstance(value, list):
        return [expand_env(v, environ, f"{where}[{i}]") for i, v in enumerate(value)]
    return value
