"""Which identity types the registered sources can look a subject up by.

A request whose identities no source can answer would find nothing anywhere: an erasure
would "complete" and tell the subject nothing is left, an export would mail an empty
package. `require_lookup` refuses such a request up front (at submission, at planning)
and again on the worker, in case the manifest changed after submission. It reads only
the manifest (`DataSource.identity_types`), never the live systems.
"""

from __future__ import annotations

from collections.abc import Iterable

from compliance.errors import ConfigError
from compliance.sources.base import DataSource


def lookup_types(sources: Iterable[DataSource]) -> frozenset[str]:
    """Every identity type at least one of `sources` can look a subject up by."""
    return frozenset(t for source in sources for t in source.identity_types())


def require_lookup(sources: Iterable[DataSource], identity_types: Iterable[str]) -> None:
    """Raise `ConfigError` unless some source answers one of `identity_types`."""
    sources = list(sources)
    wanted = sorted(set(identity_types))
    answered = lookup_types(sources)
    if not wanted or answered.intersection(wanted):
        return  # no identity at all is the caller's validation error, not ours
    asked = " or ".join(wanted)
    if not sources:
        raise ConfigError(
            f"no data source is registered, so none can look up a subject by {asked}; "
            "register one in the sources manifest (GDPR_SOURCES)"
        )
    known = ", ".join(sorted(answered)) or "no identity type at all"
    article = "an" if asked[0] in "aeiou" else "a"
    raise ConfigError(
        f"no registered source can look up a subject by {asked} (they answer {known}); "
        f"register a source with {article} {asked} identity column (or template) in the "
        "manifest (GDPR_SOURCES)"
    )
