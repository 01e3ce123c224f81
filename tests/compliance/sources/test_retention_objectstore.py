"""Retention on the objectstore connector, against the local S3-compatible server.

The server stamps objects with its own clock (to the second), so age is injected through
the cutoff: a cutoff a day after the upload makes everything due, a day before, nothing.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from typing import Any

import boto3
import pytest

from compliance.config import Settings
from compliance.errors import ManifestError
from compliance.identities import Identities, Identity
from compliance.retention.policy import Held, Limits, Policy, PolicyKind, PurgeResult, Retaining
from compliance.sources.objectstore import ObjectStoreSource, build

pytestmark = pytest.mark.s3

ADA = Identities.of([Identity("user_id", "1")])
PREFIXES = ["uploads/tmp/{user_id}/", "avatars/{user_id}/"]
SAMPLE = {
    "uploads/tmp/1/draft.png": b"ada",
    "uploads/tmp/1/draft2.png": b"ada-2",
    "uploads/tmp/10/draft.png": b"user-ten",
    "uploads/tmp/2/draft.png": b"bob",
    "uploads/tmp/loose.bin": b"nobody's",
    "avatars/1/me.png": b"ada-avatar",
}
UNDER_POLICY = {k for k in SAMPLE if k.startswith("uploads/tmp/")}
Build = Callable[..., ObjectStoreSource]


@pytest.fixture
def s3(s3_endpoint: str) -> Iterator[Any]:
    client = boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1")
    yield client
    client.close()


@pytest.fixture
def make(s3_endpoint: str, s3_bucket: str) -> Iterator[Build]:
    opened: list[ObjectStoreSource] = []

    def make_source(**spec: Any) -> ObjectStoreSource:
        full = {
            "bucket": s3_bucket,
            "endpoint_url": s3_endpoint,
            "prefixes": PREFIXES,
            "retention": [{"prefix": "uploads/tmp/", "days": 7}],
        }
        source = build("avatars", {**full, **spec}, Settings())
        opened.append(source)
        return source

    yield make_source
    for source in opened:
        source.close()


def put(s3: Any, bucket: str, objects: Mapping[str, bytes]) -> None:
    with ThreadPoolExecutor(16) as pool:
        list(
            pool.map(
                lambda kv: s3.put_object(Bucket=bucket, Key=kv[0], Body=kv[1]), objects.items()
            )
        )


def keys(s3: Any, bucket: str) -> set[str]:
    pages = s3.get_paginator("list_objects_v2").paginate(Bucket=bucket)
    return {o["Key"] for page in pages for o in page.get("Contents", [])}


def versions(s3: Any, bucket: str, prefix: str = "") -> int:
    pages = s3.get_paginator("list_object_versions").paginate(Bucket=bucket, Prefix=prefix)
    return sum(len(p.get("Versions", [])) + len(p.get("DeleteMarkers", [])) for p in pages)


def purge_all(
    source: ObjectStoreSource,
    cutoff: datetime,
    limits: Limits | None = None,
    held: Held | None = None,
    *,
    most: int = 100,
) -> list[PurgeResult]:
    """Call purge from {} until done, as the sweep does; every call's result."""
    (policy,) = source.retention_policies()
    cursor: Mapping[str, Any] = {}
    results = []
    for _ in range(most):
        result = source.purge(policy, cutoff, cursor, limits or Limits(), held or Held())
        results.append(result)
        cursor = result.cursor
        if result.done:
            return results
    raise AssertionError("purge never finished")


def later() -> datetime:
    """A cutoff a day after anything the test uploaded: everything is due."""
    return datetime.now(UTC) + timedelta(days=1)


def test_source_satisfies_the_retaining_protocol(make: Build) -> None:
    assert isinstance(make(), Retaining)


def test_policies_come_from_the_manifest_with_default_or_given_names(make: Build) -> None:
    (policy,) = make().retention_policies()
    assert policy == Policy(
        name="avatars.uploads/tmp/",
        source="avatars",
        kind=PolicyKind.OBJECTS,
        days=7,
        location="uploads/tmp/",
        entry="sources.avatars.retention[0]",
    )
    named = make(retention={"prefix": "exports/", "days": 30, "name": "exports.monthly"})
    assert [(p.name, p.location, p.days) for p in named.retention_policies()] == [
        ("exports.monthly", "exports/", 30)
    ]


def test_retention_as_text_stays_the_art15_statement(make: Build) -> None:
    source = make(retention="Until you delete your account")
    assert source.retention_policies() == ()
    assert {loc.meta.retention for loc in source.locations} == {"Until you delete your account"}


def test_purge_deletes_objects_past_the_cutoff_under_the_prefix_only(
    make: Build, s3: Any, s3_bucket: str
) -> None:
    put(s3, s3_bucket, SAMPLE)
    (result,) = purge_all(make(), later())
    assert (result.done, result.deleted, result.held, result.batches) == (True, 5, 0, 1)
    assert len(result.batch_ms) == 1
    assert keys(s3, s3_bucket) == {"avatars/1/me.png"}


def test_purge_keeps_objects_newer_than_the_cutoff(make: Build, s3: Any, s3_bucket: str) -> None:
    put(s3, s3_bucket, SAMPLE)
    source = make()
    (policy,) = source.retention_policies()
    earlier = datetime.now(UTC) - timedelta(days=1)
    assert source.retention_plan(policy, earlier, Held()).due == 0
    (result,) = purge_all(source, earlier)
    assert (result.deleted, result.held, result.batches) == (0, 0, 0)
    assert keys(s3, s3_bucket) == set(SAMPLE)


def test_purge_in_a_versioned_bucket_leaves_nothing_to_restore(
    make: Build, s3: Any, s3_bucket: str
) -> None:
    s3.put_bucket_versioning(Bucket=s3_bucket, VersioningConfiguration={"Status": "Enabled"})
    put(s3, s3_bucket, SAMPLE)
    put(s3, s3_bucket, {"uploads/tmp/2/draft.png": b"bob-v2"})
    s3.delete_object(Bucket=s3_bucket, Key="uploads/tmp/loose.bin")  # a delete marker
    source = make()
    (policy,) = source.retention_policies()
    assert source.retention_plan(policy, later(), Held()).due == 7  # 5 + 1 versions, 1 marker
    assert sum(r.deleted for r in purge_all(source, later(), Limits(batch_size=3))) == 7
    assert versions(s3, s3_bucket, "uploads/tmp/") == 0
    assert versions(s3, s3_bucket) == 1  # avatars/1/me.png


def test_a_hold_on_the_whole_source_deletes_nothing_and_counts_it_held(
    make: Build, s3: Any, s3_bucket: str
) -> None:
    put(s3, s3_bucket, SAMPLE)
    source = make()
    (policy,) = source.retention_policies()
    whole = Held(whole=True, basis="litigation")
    plan = source.retention_plan(policy, later(), whole)
    assert (plan.due, plan.held) == (0, 5)
    (result,) = purge_all(source, later(), held=whole)
    assert (result.deleted, result.held, result.batches) == (0, 5, 0)
    assert keys(s3, s3_bucket) == set(SAMPLE)


def test_held_subjects_objects_stay_and_are_counted_others_go(
    make: Build, s3: Any, s3_bucket: str
) -> None:
    put(s3, s3_bucket, SAMPLE)
    (result,) = purge_all(make(), later(), held=Held(identities=ADA))
    assert (result.deleted, result.held) == (3, 2)  # user 10's objects are not user 1's
    assert keys(s3, s3_bucket) == {
        "uploads/tmp/1/draft.png",
        "uploads/tmp/1/draft2.png",
        "avatars/1/me.png",
    }  # fmt: skip


def test_a_rerun_after_a_purge_is_a_no_op(make: Build, s3: Any, s3_bucket: str) -> None:
    put(s3, s3_bucket, SAMPLE)
    source = make()
    purge_all(source, later())
    (again,) = purge_all(source, later())
    assert (again.done, again.deleted, again.held, again.batches) == (True, 0, 0, 0)
    assert keys(s3, s3_bucket) == {"avatars/1/me.png"}


def test_bounded_calls_resume_from_counters_and_count_held_objects_once(
    make: Build, s3: Any, s3_bucket: str
) -> None:
    put(s3, s3_bucket, SAMPLE | {f"uploads/tmp/3/{i}.png": b"x" for i in range(7)})
    results = purge_all(make(), later(), Limits(batch_size=2, max_items=3), Held(identities=ADA))
    assert [r.deleted for r in results] == [3, 3, 3, 1]
    assert [r.done for r in results] == [False, False, False, True]
    assert sum(r.held for r in results) == 2
    assert all(r.batches == len(r.batch_ms) for r in results)
    cursors = repr([r.cursor for r in results])
    assert "uploads" not in cursors and "png" not in cursors  # keys hold identities
    assert keys(s3, s3_bucket) == {
        "uploads/tmp/1/draft.png", "uploads/tmp/1/draft2.png", "avatars/1/me.png"
    }  # fmt: skip


def test_a_call_out_of_time_still_makes_progress_and_the_run_ends(
    make: Build, s3: Any, s3_bucket: str
) -> None:
    put(s3, s3_bucket, SAMPLE)
    results = purge_all(make(), later(), Limits(max_seconds=0), Held(identities=ADA))
    assert [(r.deleted, r.held) for r in results] == [(0, 1), (0, 1), (1, 0), (1, 0), (1, 0)]
    assert keys(s3, s3_bucket) == {
        "uploads/tmp/1/draft.png", "uploads/tmp/1/draft2.png", "avatars/1/me.png"
    }  # fmt: skip


def test_big_prefixes_are_deleted_in_batches_of_at_most_1000(
    make: Build, s3: Any, s3_bucket: str
) -> None:
    put(s3, s3_bucket, {f"uploads/tmp/{i:05}.bin": b"x" for i in range(2345)})
    (result,) = purge_all(make(), later(), Limits(batch_size=5000))
    assert (result.deleted, result.batches) == (2345, 3)
    assert keys(s3, s3_bucket) == set()


def test_many_versions_across_listing_pages_are_all_deleted(
    make: Build, s3: Any, s3_bucket: str
) -> None:
    s3.put_bucket_versioning(Bucket=s3_bucket, VersioningConfiguration={"Status": "Enabled"})
    objects = {f"uploads/tmp/{i:04}.bin": b"x" for i in range(700)}
    put(s3, s3_bucket, objects)
    put(s3, s3_bucket, objects)  # a second version of each: 1400 across two pages
    results = purge_all(make(), later(), Limits(batch_size=300))
    assert sum(r.deleted for r in results) == 1400
    assert versions(s3, s3_bucket) == 0


def test_plan_counts_match_what_purge_then_does(make: Build, s3: Any, s3_bucket: str) -> None:
    put(s3, s3_bucket, SAMPLE)
    source = make()
    (policy,) = source.retention_policies()
    held = Held(identities=ADA)
    cutoff = later()
    plan = source.retention_plan(policy, cutoff, held)
    assert (plan.policy, plan.cutoff, plan.due, plan.held) == (policy.name, cutoff, 3, 2)
    assert keys(s3, s3_bucket) == set(SAMPLE)  # a plan writes nothing
    done = purge_all(source, cutoff, Limits(batch_size=2, max_items=2), held)
    assert (sum(r.deleted for r in done), sum(r.held for r in done)) == (plan.due, plan.held)


def test_status_reports_the_oldest_and_overdue_before_and_none_after(
    make: Build, s3: Any, s3_bucket: str
) -> None:
    put(s3, s3_bucket, SAMPLE)
    source = make()
    (policy,) = source.retention_policies()
    uploaded = datetime.now(UTC)
    week_later = uploaded + timedelta(days=8)
    before = source.retention_status(policy, week_later, Held(identities=ADA))
    assert (before.policy, before.limit_days, before.overdue, before.held) == (
        "avatars.uploads/tmp/", 7, 5, 2
    )  # fmt: skip
    assert before.oldest is not None
    assert uploaded - timedelta(minutes=5) < before.oldest <= uploaded
    assert source.retention_status(policy, uploaded, Held()).overdue == 0  # not a week old
    purge_all(source, policy.cutoff(week_later), held=Held(identities=ADA))
    after = source.retention_status(policy, week_later, Held(identities=ADA))
    assert (after.overdue - after.held, after.held) == (0, 2)
    assert source.retention_status(policy, week_later, Held()).overdue == 2  # only held left
    purge_all(source, policy.cutoff(week_later))
    empty = source.retention_status(policy, week_later, Held())
    assert (empty.oldest, empty.overdue, empty.held) == (None, 0, 0)


@pytest.mark.parametrize(
    ("retention", "message"),
    [
        (
            [{"prefix": "uploads/", "days": 7}, {"prefix": "uploads/{user_id}/", "days": 7}],
            r"^sources\.avatars\.retention\[1\]: the prefix must be literal",
        ),
        ([{"prefix": "uploads/", "days": 0}], r"^sources\.avatars\.retention\[0\]\.days must be"),
        ([{"prefix": "uploads/", "days": -3}], r"^sources\.avatars\.retention\[0\]\.days must be"),
        ([{"prefix": "uploads/", "days": 1.5}], r"^sources\.avatars\.retention\[0\]\.days must"),
        ([{"prefix": "uploads/", "days": True}], r"^sources\.avatars\.retention\[0\]\.days must"),
        ([{"prefix": "uploads/"}], r"^sources\.avatars\.retention\[0\]\.days is missing"),
        (
            [{"prefix": "uploads/", "days": 7, "age": 3}],
            r"^sources\.avatars\.retention\[0\]\.age is not a known setting",
        ),
        ([{"days": 7}], r"^sources\.avatars\.retention\[0\]\.prefix is missing or empty"),
        (["uploads/"], r"^sources\.avatars\.retention\[0\] must be a table like"),
        (
            [{"prefix": "a/", "days": 7, "name": "x"}, {"prefix": "b/", "days": 7, "name": "x"}],
            r"^sources\.avatars\.retention\[1\]: the name is used twice",
        ),
        (7, r"^sources\.avatars\.retention must be text \(Art\. 15\) or a table"),
    ],
)
def test_manifest_mistakes_are_one_line_errors_naming_the_entry(
    retention: Any, message: str, s3_endpoint: str
) -> None:
    spec = {"bucket": "b", "endpoint_url": s3_endpoint, "prefixes": PREFIXES}
    with pytest.raises(ManifestError, match=message) as caught:
        build("avatars", {**spec, "retention": retention}, Settings())
    assert "\n" not in str(caught.value)
