"""The retention policy: parsing JERP_RETENTION, worked examples, and invariants under hypothesis."""

from __future__ import annotations

import random
from datetime import datetime, timedelta, timezone

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from jerp_jobs.errors import InvalidInput
from jerp_jobs.retention import (
    DEFAULT,
    Backup,
    Decision,
    Policy,
    parse_policy,
    plan_deletions,
)

UTC = timezone.utc
NOW = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)


def backup(ts: datetime, verified: bool = True, suffix: str = "") -> Backup:
    return Backup(timestamp=ts, key=ts.astimezone(UTC).strftime("%Y%m%d_%H%M%S") + suffix, verified=verified)


def daily_backups(first: datetime, days: int, verified: bool = True) -> list[Backup]:
    return [backup(first + timedelta(days=n), verified) for n in range(days)]


def kept_keys(decision: Decision) -> list[str]:
    return [b.key for b in decision.keep]


# --- parsing -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("gfs:7/4/12/10", Policy("gfs", daily=7, weekly=4, monthly=12, yearly=10)),
        ("gfs:0/0/0/1", Policy("gfs", yearly=1)),
        ("  GFS:14/8/0/0\n", Policy("gfs", daily=14, weekly=8)),
        ("last:1", Policy("last", last=1)),
        ("Last:30", Policy("last", last=30)),
        (None, Policy("gfs", daily=7, weekly=4, monthly=12, yearly=10)),
        ("", Policy("gfs", daily=7, weekly=4, monthly=12, yearly=10)),
        ("   ", Policy("gfs", daily=7, weekly=4, monthly=12, yearly=10)),
    ],
)
def test_parse_policy_accepts(text: str | None, expected: Policy) -> None:
    assert parse_policy(text) == expected


@pytest.mark.parametrize("text", ["gfs:7/4/12/10", "gfs:0/1/0/0", "last:5"])
def test_policy_text_round_trips(text: str) -> None:
    assert str(parse_policy(text)) == text
    assert DEFAULT == "gfs:7/4/12/10"


@pytest.mark.parametrize(
    "text",
    [
        "gfs:0/0/0/0",
        "last:0",
        "last:-1",
        "last:",
        "last:5x",
        "last:2.5",
        "gfs:7/4/12",
        "gfs:7/4/12/10/1",
        "gfs:7/-4/12/10",
        "gfs:a/b/c/d",
        "gfs:7 / 4 / 12 / 10",
        "7/4/12/10",
        "keep:5",
        "5",
        "gfs",
        "last:9999999",
    ],
)
def test_parse_policy_refuses(text: str) -> None:
    with pytest.raises(InvalidInput) as info:
        parse_policy(text)
    message = str(info.value)
    assert "JERP_RETENTION" in message
    assert repr(text) in message
    assert "gfs:D/W/M/Y" in message and "last:N" in message
    assert info.value.fields["variable"] == "JERP_RETENTION"


def test_policy_refuses_nonsense_when_built_directly() -> None:
    with pytest.raises(InvalidInput):
        Policy("weekly")
    with pytest.raises(InvalidInput):
        Policy("gfs", daily=-1)


def test_safety_window() -> None:
    assert parse_policy("gfs:7/4/12/10").safety_window == timedelta(days=7)
    assert parse_policy("gfs:0/4/12/10").safety_window == timedelta(days=1)
    assert parse_policy("last:3").safety_window == timedelta(days=1)


# --- worked examples -----------------------------------------------------------------------


def test_thirty_daily_backups_with_the_default_policy() -> None:
    backups = daily_backups(datetime(2026, 11, 1, 2, 0, tzinfo=UTC), 30)
    decision = plan_deletions(backups, parse_policy("gfs:7/4/12/10"), now=NOW)

    assert kept_keys(decision) == [
        "20261130_020000",
        "20261129_020000",
        "20261128_020000",
        "20261127_020000",
        "20261126_020000",
        "20261125_020000",
        "20261124_020000",
        "20261122_020000",
        "20261115_020000",
    ]
    assert decision.reasons["20261130_020000"] == (
        "newest verified",
        "daily 2026-11-30",
        "weekly 2026-W49",
        "monthly 2026-11",
        "yearly 2026",
        "within 7d safety window",
    )
    assert decision.reasons["20261129_020000"] == (
        "daily 2026-11-29",
        "weekly 2026-W48",
        "within 7d safety window",
    )
    assert decision.reasons["20261122_020000"] == ("weekly 2026-W47",)
    assert decision.reasons["20261115_020000"] == ("weekly 2026-W46",)
    deleted_days = sorted(int(b.key[6:8]) for b in decision.delete)
    assert deleted_days == [*range(1, 15), *range(16, 22), 23]


def test_three_years_of_daily_backups() -> None:
    backups = daily_backups(datetime(2023, 12, 1, 2, 0, tzinfo=UTC), 1096)  # up to 2026-11-30
    decision = plan_deletions(backups, parse_policy("gfs:7/4/12/10"), now=NOW)

    monthly = sorted(r for reasons in decision.reasons.values() for r in reasons if r.startswith("monthly"))
    assert monthly == [f"monthly {m}" for m in ["2025-12", *(f"2026-{n:02d}" for n in range(1, 12))]]
    yearly = {r: k for k, reasons in decision.reasons.items() for r in reasons if r.startswith("yearly")}
    assert yearly == {
        "yearly 2026": "20261130_020000",
        "yearly 2025": "20251231_020000",
        "yearly 2024": "20241231_020000",
        "yearly 2023": "20231231_020000",
    }
    # 7 daily + weekly 2026-W48/W47/W46 + 10 older month-ends + 3 older year-ends
    # (2025-12-31 is both monthly and yearly).
    assert len(decision.keep) == 7 + 3 + 10 + 2
    assert decision.keep[-1].key == "20231231_020000"


def test_periods_are_counted_among_those_with_backups_not_back_from_now() -> None:
    backups = daily_backups(datetime(2026, 10, 1, 2, 0, tzinfo=UTC), 5)  # backups stopped in October
    decision = plan_deletions(backups, parse_policy("gfs:3/0/0/0"), now=NOW)
    assert kept_keys(decision) == ["20261005_020000", "20261004_020000", "20261003_020000"]


def test_newest_backup_of_a_day_is_the_daily_one() -> None:
    day = datetime(2026, 11, 20, tzinfo=UTC)
    backups = [backup(day + timedelta(hours=h)) for h in (1, 9, 17)]
    decision = plan_deletions(backups, parse_policy("gfs:1/0/0/0"), now=NOW)
    assert kept_keys(decision) == ["20261120_170000"]
    assert decision.reasons["20261120_170000"] == ("newest verified", "daily 2026-11-20")


def test_same_second_ties_are_broken_by_key() -> None:
    ts = datetime(2026, 11, 20, 2, 0, tzinfo=UTC)
    backups = [backup(ts, suffix="-a"), backup(ts, suffix="-b")]
    for order in (backups, backups[::-1]):
        decision = plan_deletions(order, parse_policy("gfs:1/0/0/0"), now=NOW)
        assert kept_keys(decision) == ["20261120_020000-b"]


def test_unverified_backups_fill_no_bucket() -> None:
    day = datetime(2026, 11, 10, tzinfo=UTC)
    backups = [backup(day + timedelta(hours=2)), backup(day + timedelta(hours=20), verified=False)]
    decision = plan_deletions(backups, parse_policy("gfs:7/4/12/10"), now=NOW)
    assert kept_keys(decision) == ["20261110_020000"]
    assert "daily 2026-11-10" in decision.reasons["20261110_020000"]
    assert [b.key for b in decision.delete] == ["20261110_200000"]


def test_recent_unverified_backups_are_kept_old_ones_deleted() -> None:
    backups = [
        backup(NOW - timedelta(hours=1), verified=False),
        backup(NOW - timedelta(days=6, hours=23), verified=False),
        backup(NOW - timedelta(days=7), verified=False),
        backup(NOW - timedelta(days=2)),
    ]
    decision = plan_deletions(backups, parse_policy("gfs:7/4/12/10"), now=NOW)
    assert kept_keys(decision) == ["20261130_110000", "20261128_120000", "20261123_130000"]
    assert decision.reasons["20261130_110000"] == ("unverified, within 7d safety window",)
    assert [b.key for b in decision.delete] == ["20261123_120000"]


def test_without_any_verified_backup_only_the_safety_window_survives() -> None:
    backups = daily_backups(datetime(2026, 11, 1, 2, 0, tzinfo=UTC), 30, verified=False)
    decision = plan_deletions(backups, parse_policy("gfs:7/4/12/10"), now=NOW)
    assert [int(b.key[6:8]) for b in decision.keep] == list(range(30, 23, -1))


def test_the_newest_verified_backup_survives_even_when_old() -> None:
    backups = [backup(datetime(2025, 1, 1, tzinfo=UTC)), backup(NOW - timedelta(days=40), verified=False)]
    decision = plan_deletions(backups, parse_policy("last:1"), now=NOW)
    assert kept_keys(decision) == ["20250101_000000"]
    assert decision.reasons["20250101_000000"] == ("newest verified", "last 1/1")


def test_last_n_keeps_the_newest_verified_and_the_last_day() -> None:
    backups = daily_backups(datetime(2026, 11, 1, 2, 0, tzinfo=UTC), 30)
    backups.append(backup(NOW - timedelta(hours=3), verified=False))
    backups.append(backup(NOW - timedelta(hours=30), verified=False))
    decision = plan_deletions(backups, parse_policy("last:3"), now=NOW)
    assert kept_keys(decision) == ["20261130_090000", "20261130_020000", "20261129_020000", "20261128_020000"]
    assert decision.reasons["20261130_090000"] == ("unverified, within 1d safety window",)
    assert decision.reasons["20261128_020000"] == ("last 3/3",)


def test_gfs_with_no_daily_count_still_has_a_one_day_window() -> None:
    backups = [backup(NOW - timedelta(hours=h)) for h in (2, 5, 23, 25)]
    decision = plan_deletions(backups, parse_policy("gfs:0/0/0/1"), now=NOW)
    assert kept_keys(decision) == ["20261130_100000", "20261130_070000", "20261129_130000"]


def test_periods_use_utc_and_iso_weeks() -> None:
    new_york = timezone(timedelta(hours=-5))
    late_evening = Backup(datetime(2020, 12, 31, 21, 30, tzinfo=new_york), key="a", verified=True)
    assert late_evening.timestamp == datetime(2021, 1, 1, 2, 30, tzinfo=UTC)
    decision = plan_deletions([late_evening], parse_policy("gfs:1/1/1/1"), now=NOW)
    assert decision.reasons["a"] == (
        "newest verified",
        "daily 2021-01-01",
        "weekly 2020-W53",
        "monthly 2021-01",
        "yearly 2021",
    )


def test_future_timestamps_count_as_young() -> None:
    ahead = backup(NOW + timedelta(hours=2), verified=False)
    decision = plan_deletions([ahead], parse_policy("last:1"), now=NOW)
    assert decision.keep == (ahead,)


def test_empty_input() -> None:
    decision = plan_deletions([], parse_policy(DEFAULT), now=NOW)
    assert decision.keep == () and decision.delete == () and decision.reasons == {}


def test_refuses_naive_datetimes_and_duplicate_keys() -> None:
    with pytest.raises(InvalidInput, match="naive"):
        Backup(datetime(2026, 1, 1), key="x", verified=True)
    with pytest.raises(InvalidInput, match="timezone-aware"):
        plan_deletions([], parse_policy(DEFAULT), now=datetime(2026, 1, 1))
    twice = [backup(NOW), backup(NOW - timedelta(days=1)), Backup(NOW, key="20261130_120000", verified=False)]
    with pytest.raises(InvalidInput, match="20261130_120000"):
        plan_deletions(twice, parse_policy(DEFAULT), now=NOW)


def test_as_record() -> None:
    backups = daily_backups(datetime(2026, 11, 28, 2, 0, tzinfo=UTC), 3)
    decision = plan_deletions(backups, parse_policy("last:1"), now=NOW)
    assert decision.as_record() == {
        "policy": "last:1",
        "keep": {"20261130_020000": ["newest verified", "last 1/1", "within 1d safety window"]},
        "delete": ["20261129_020000", "20261128_020000"],
    }


# --- invariants ----------------------------------------------------------------------------

OFFSETS = [timezone.utc, timezone(timedelta(hours=-5)), timezone(timedelta(hours=5, minutes=30))]
THREE_YEARS = 3 * 366 * 86400


@st.composite
def backup_sets(draw: st.DrawFn) -> tuple[list[Backup], datetime]:
    """Random backups over ~3 years before a random ``now``, with same-second and same-day clumps."""
    now = NOW + timedelta(seconds=draw(st.integers(-THREE_YEARS, THREE_YEARS)))
    anchors = draw(st.lists(st.integers(-2 * 86400, THREE_YEARS), min_size=1, max_size=8))
    jitter = st.one_of(st.just(0), st.integers(0, 59), st.integers(0, 86400), st.integers(0, 40 * 86400))
    clumped = st.builds(lambda anchor, j: anchor - j, st.sampled_from(anchors), jitter)
    age = st.one_of(st.integers(-86400, THREE_YEARS), clumped)
    size = draw(st.integers(0, 80))
    entry = st.tuples(age, st.booleans(), st.sampled_from(OFFSETS))
    entries = draw(st.lists(entry, min_size=size, max_size=size))
    backups = []
    for index, (seconds, verified, tz) in enumerate(entries):
        ts = (now - timedelta(seconds=seconds)).astimezone(tz)
        backups.append(Backup(ts, key=f"{ts.astimezone(UTC):%Y%m%d_%H%M%S}-{index:02d}", verified=verified))
    return draw(st.permutations(backups)), now


def gfs_texts() -> st.SearchStrategy[str]:
    count = st.integers(0, 15)
    return st.tuples(count, count, count, count).filter(any).map(lambda c: "gfs:{}/{}/{}/{}".format(*c))


BUCKET_WORDS = {"daily", "weekly", "monthly", "yearly", "last"}
policies = st.one_of(gfs_texts(), st.integers(1, 25).map(lambda n: f"last:{n}")).map(parse_policy)
invariant_settings = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def newest_first(backups: list[Backup]) -> list[Backup]:
    return sorted(backups, key=lambda b: (b.timestamp, b.key), reverse=True)


def reference_reasons(backups: list[Backup], policy: Policy, now: datetime) -> dict[str, set[str]]:
    """The rules restated independently (period labels sort chronologically as text)."""
    verified = newest_first([b for b in backups if b.verified])
    reasons: dict[str, set[str]] = {b.key: set() for b in backups}
    if verified:
        reasons[verified[0].key].add("newest verified")
    for b in backups:
        if now - b.timestamp < policy.safety_window:
            prefix = "" if b.verified else "unverified, "
            reasons[b.key].add(f"{prefix}within {policy.safety_window.days}d safety window")
    for rank, b in enumerate(verified[: policy.last], start=1):
        reasons[b.key].add(f"last {rank}/{policy.last}")
    buckets = [
        ("daily", policy.daily, lambda t: t.strftime("%Y-%m-%d")),
        ("weekly", policy.weekly, lambda t: "%04d-W%02d" % t.isocalendar()[:2]),
        ("monthly", policy.monthly, lambda t: t.strftime("%Y-%m")),
        ("yearly", policy.yearly, lambda t: t.strftime("%Y")),
    ]
    for word, count, label in buckets:
        for period in sorted({label(b.timestamp) for b in verified}, reverse=True)[:count]:
            reasons[next(b.key for b in verified if label(b.timestamp) == period)].add(f"{word} {period}")
    return {key: found for key, found in reasons.items() if found}


@invariant_settings
@given(backup_sets(), policies)
def test_invariants(data: tuple[list[Backup], datetime], policy: Policy) -> None:
    backups, now = data
    decision = plan_deletions(backups, policy, now=now)
    deleted = set(decision.delete)
    kept = set(decision.keep)

    # 4. keep and delete partition the input; both are newest first.
    assert kept | deleted == set(backups)
    assert not kept & deleted
    assert len(decision.keep) + len(decision.delete) == len(backups)
    assert list(decision.keep) == newest_first(list(decision.keep))
    assert list(decision.delete) == newest_first(list(decision.delete))

    # 1. never the newest verified backup.
    verified = newest_first([b for b in backups if b.verified])
    if verified:
        assert verified[0] in kept
        assert "newest verified" in decision.reasons[verified[0].key]

    # 2. never anything younger than the safety window (D days for gfs, at least one day).
    window = policy.safety_window
    assert window >= timedelta(days=max(policy.daily, 1))
    assert all(now - b.timestamp >= window for b in deleted)

    # Every kept backup says why; unverified ones are kept only for the window.
    assert set(decision.reasons) == {b.key for b in decision.keep}
    assert all(decision.reasons[b.key] for b in decision.keep)
    for b in decision.keep:
        if not b.verified:
            assert decision.reasons[b.key] == (f"unverified, within {window.days}d safety window",)

    # 5. bucket counts are bounded: at most D+W+M+Y (or N) kept beyond the protected ones.
    protected = {b.key for b in decision.keep if now - b.timestamp < window} | {b.key for b in verified[:1]}
    budget = policy.daily + policy.weekly + policy.monthly + policy.yearly + policy.last
    assert len(decision.keep) <= budget + len(protected)
    from_buckets = [k for k, rs in decision.reasons.items() if any(r.split()[0] in BUCKET_WORDS for r in rs)]
    assert len(from_buckets) <= budget
    counts = {"daily": policy.daily, "weekly": policy.weekly, "monthly": policy.monthly}
    counts |= {"yearly": policy.yearly, "last": policy.last}
    for word, count in counts.items():
        labels = [r for reasons in decision.reasons.values() for r in reasons if r.split()[0] == word]
        assert len(labels) == len(set(labels)) <= count

    # The rules as documented, restated independently.
    assert {k: set(r) for k, r in decision.reasons.items()} == reference_reasons(backups, policy, now)


@invariant_settings
@given(backup_sets(), policies, st.randoms(use_true_random=False))
def test_stable_and_order_independent(
    data: tuple[list[Backup], datetime], policy: Policy, rnd: random.Random
) -> None:
    backups, now = data
    decision = plan_deletions(backups, policy, now=now)

    # 3. applying the decision and planning again deletes nothing more, for the same reasons.
    again = plan_deletions(list(decision.keep), policy, now=now)
    assert again.delete == ()
    assert again.keep == decision.keep
    assert again.reasons == decision.reasons

    # 4. deterministic and independent of input order.
    shuffled = list(backups)
    rnd.shuffle(shuffled)
    assert plan_deletions(shuffled, policy, now=now) == decision
