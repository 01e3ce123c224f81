"""A declarative third-party API: export with GET, erase with DELETE (or POST), verify with GET.

```toml
[sources.crm]
kind = "http"
base_url = "https://crm.example.com/api"
auth_header = "Authorization"              # default
auth_secret = "Bearer ${CRM_TOKEN}"        # expanded by the registry; never logged
export = { method = "GET", path = "/subjects/{email}", records = "contacts" }
erase = { method = "DELETE", path = "/subjects/{email}" }
# erase = { method = "POST", path = "/erasures", body = { email = "{email}" } }
# verify = { path = "/subjects/{email}" }  # default: the export endpoint
```

Contract with the API: export answers JSON (an object is one row; a list is rows; with
`records`, the rows are under that dotted key) or 404 for "nothing held"; erase answers
2xx, or 404 for "already gone" (so a repeated erasure succeeds); after erasure verify's
GET answers 404 or no rows. 429/5xx/network errors are retried (see httpclient); 401/403
and other 4xx are terminal. Path values are percent-encoded; body values are JSON.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from compliance.config import Settings
from compliance.errors import ManifestError, SourceRefusedError
from compliance.identities import Identities
from compliance.sources.base import (
    Action,
    Art15,
    Disposition,
    EraseResult,
    LocationPlan,
    Residue,
    RowsItem,
    SourcePlan,
)
from compliance.sources.httpclient import Client, Response, RetryPolicy
from compliance.sources.templating import (
    ART15_KEYS,
    Template,
    art15,
    check_keys,
    combinations,
    escape_url_segment,
    manifest_factory,
    optional_number,
    parse_template,
    require_str,
)

KIND = "http"
_KEYS = {"base_url", "auth_header", "auth_secret", "export", "erase", "verify", "timeout",
         "max_attempts", "backoff", "max_backoff"} | ART15_KEYS  # fmt: skip
_METHODS = {"export": ("GET", "POST"), "erase": ("DELETE", "POST"), "verify": ("GET", "POST")}


@dataclass(frozen=True)
class Endpoint:
    method: str
    path: Template
    records: str = ""  # dotted key of the rows inside the JSON answer
    body: Mapping[str, Template] | None = None

    @property
    def label(self) -> str:
        return f"{self.method} {self.path.text}"

    def fields(self) -> list[str]:
        return [*self.path.fields, *(f for t in (self.body or {}).values() for f in t.fields)]


def build(name: str, spec: Mapping[str, Any], settings: Settings) -> HttpSource:
    """The `http` factory: validate `spec` (one `[sources.<name>]` table)."""
    where = f"sources.{name}"
    check_keys(spec, _KEYS, where)
    base_url = require_str(spec, "base_url", where, '"https://crm.example.com/api"').rstrip("/")
    if not base_url.startswith(("http://", "https://")):
        raise ManifestError(f"{where}.base_url must start with http:// or https://")
    header = spec.get("auth_header", "Authorization")
    secret = spec.get("auth_secret", "")
    if not isinstance(header, str) or not header.replace("-", "").isalnum():
        raise ManifestError(f"{where}.auth_header must be a header name like 'Authorization'")
    if not isinstance(secret, str) or any(ch in secret for ch in "\r\n\0"):
        raise ManifestError(f"{where}.auth_secret must be one line of text; check its variable")
    erase = _endpoint(spec, "erase", where, required=True)
    export = _endpoint(spec, "export", where)
    verify = _endpoint(spec, "verify", where) or export
    if erase is not None and verify is None:
        raise ManifestError(
            f"{where}.verify is missing: erasure must be checkable; add export = {{...}} or "
            'verify = { path = "/subjects/{email}" }'
        )
    policy = RetryPolicy(
        max_attempts=int(optional_number(spec, "max_attempts", where, 5, minimum=1)),
        backoff=optional_number(spec, "backoff", where, 0.5),
        max_backoff=optional_number(spec, "max_backoff", where, 30),
        timeout=optional_number(spec, "timeout", where, 10, minimum=0.1),
    )
    client = Client(name, policy, {header: secret} if secret else {})
    endpoints = {"export": export, "erase": erase, "verify": verify}
    return HttpSource(name, base_url, endpoints, client, art15(spec, where))


from_manifest = manifest_factory(build)


def _endpoint(spec: Mapping[str, Any], key: str, where: str, required: bool = False) -> Any:
    here = f"{where}.{key}"
    table = spec.get(key)
    if table is None and not required:
        return None
    if not isinstance(table, Mapping):
        raise ManifestError(f'{here} must be a table like {{ path = "/subjects/{{email}}" }}')
    check_keys(table, {"method", "path", "records", "body"}, here)
    methods = _METHODS[key]
    method = str(table.get("method", methods[0])).upper()
    if method not in methods:
        raise ManifestError(f"{here}.method must be one of {', '.join(methods)}")
    path = parse_template(table.get("path"), f"{here}.path", require_field="body" not in table)
    if not path.text.startswith("/"):
        raise ManifestError(f"{here}.path must start with '/', e.g. '/subjects/{{email}}'")
    body = table.get("body")
    if body is not None and (method != "POST" or not isinstance(body, Mapping)):
        raise ManifestError(f'{here}.body must be a table, and only with method = "POST"')
    templates = {k: parse_template(v, f"{here}.body.{k}") for k, v in (body or {}).items()}
    records = table.get("records", "")
    if not isinstance(records, str):
        raise ManifestError(f"{here}.records must be a dotted key like 'data.items'")
    return Endpoint(method, path, records, templates if body is not None else None)


class HttpSource:
    """A `DataSource` over a third-party API."""

    kind = KIND

    def __init__(
        self,
        name: str,
        base_url: str,
        endpoints: Mapping[str, Endpoint | None],
        client: Client,
        meta: Art15 = Art15(),  # noqa: B008  (a frozen value)
    ) -> None:
        self.name = name
        self.base_url = base_url
        self.endpoints = endpoints
        self.client = client
        self.meta = meta

    def identity_types(self) -> frozenset[str]:
        """The identity types named in the endpoints' paths and bodies."""
        return frozenset(f for e in self.endpoints.values() if e for f in e.fields())

    def resolve(self, identities: Identities) -> Identities:
        return identities

    def plan(self, identities: Identities, action: Action) -> SourcePlan:
        """Counts what the API holds now (reads only)."""
        key = "export" if action in (Action.EXPORT, Action.DISCOVER) else "verify"
        endpoint = self.endpoints[key]
        count = sum(len(self._fetch(endpoint, v)) for v in self._combos(endpoint, identities))
        disposition = Disposition.EXPORT if key == "export" else Disposition.DELETE
        label = endpoint.label if endpoint else "(no endpoint)"
        return SourcePlan(self.name, KIND, (LocationPlan(label, disposition, count),))

    def export(self, identities: Identities) -> Iterator[RowsItem]:
        endpoint = self.endpoints["export"]
        rows = [row for v in self._combos(endpoint, identities) for row in self._fetch(endpoint, v)]
        if endpoint is not None and rows:
            yield RowsItem(self.name, endpoint.path.text, rows, self.meta)

    def erase(
        self, identities: Identities, checkpoint: Mapping[str, Any], batch_size: int
    ) -> EraseResult:
        endpoint = self.endpoints["erase"]
        combos = self._combos(endpoint, identities)
        index = int(checkpoint.get("next", 0))
        deleted = 0
        for values in combos[index : index + max(1, batch_size)]:
            assert endpoint is not None
            deleted += self._erase_one(endpoint, values)
            index += 1
        return EraseResult(index >= len(combos), {"next": index}, deleted=deleted)

    def verify(self, identities: Identities) -> list[Residue]:
        endpoint = self.endpoints["verify"]
        count = sum(len(self._fetch(endpoint, v)) for v in self._combos(endpoint, identities))
        return [Residue(f"{self.name}:{endpoint.label}", count)] if endpoint and count else []

    def location_facts(self) -> Mapping[str, Art15]:
        """Per endpoint, the source's Art. 15 facts (`Describing`)."""
        return {e.label: self.meta for e in self.endpoints.values() if e is not None}

    def close(self) -> None:
        """Nothing to release: each request opens and closes its own connection."""

    # --- requests -----------------------------------------------------------------------

    def _combos(self, endpoint: Endpoint | None, identities: Identities) -> list[dict[str, str]]:
        return combinations(endpoint.fields(), identities) if endpoint else []

    def _request(self, endpoint: Endpoint, values: Mapping[str, str]) -> Response:
        path = endpoint.path.fill(values, escape_url_segment)
        if path is None:
            return Response(404)  # a value that cannot be sent matches nothing
        body = None
        if endpoint.body is not None:
            data = {k: t.fill(values, lambda v: v) for k, t in endpoint.body.items()}
            body = json.dumps(data).encode()
        return self.client.send(endpoint.method, self.base_url + path, endpoint.label, body)

    def _fetch(self, endpoint: Endpoint | None, values: Mapping[str, str]) -> list[Any]:
        if endpoint is None:
            return []
        response = self._request(endpoint, values)
        if response.status == 404 or (response.status < 300 and not response.body.strip()):
            return []
        self._check(endpoint, response)
        try:
            found: Any = json.loads(response.body)
        except ValueError as exc:
            raise SourceRefusedError(f"{self._where(endpoint)} answered invalid JSON") from exc
        for part in filter(None, endpoint.records.split(".")):
            found = found.get(part) if isinstance(found, Mapping) else None
        if found is None:
            return []
        rows = found if isinstance(found, list) else [found]
        return [row if isinstance(row, Mapping) else {"value": row} for row in rows]

    def _erase_one(self, endpoint: Endpoint, values: Mapping[str, str]) -> int:
        response = self._request(endpoint, values)
        if response.status == 404:
            return 0  # already gone
        self._check(endpoint, response)
        return 1

    def _check(self, endpoint: Endpoint, response: Response) -> None:
        status = response.status
        if 200 <= status < 300:
            return
        if status in (401, 403):
            hint = "check auth_secret and the API key's permissions"
        else:
            hint = "check the endpoint in the manifest against the API's documentation"
        raise SourceRefusedError(f"{self._where(endpoint)} answered {status}; {hint}")

    def _where(self, endpoint: Endpoint) -> str:
        return f"sources.{self.name}: {endpoint.label}"
