"""The auth mechanism's parts on their own: principals file, token bucket, stream counter."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from cofounder_server.auth.limits import RateLimiter, StreamLimiter
from cofounder_server.auth.tokens import PrincipalsFileError, hash_token, load_credentials
from cofounder_server.domain.principal import Role
from tests.auth.support import ALICE, BILLING, CALLERS, Caller, FakeMonotonic, new_token, principals_toml


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "principals.toml"
    path.write_text(text)
    return path


def test_the_file_maps_token_digests_and_certificate_names_to_principals(tmp_path) -> None:
    rotated = Caller("alice", "user", new_token())
    text = principals_toml([*CALLERS, rotated], certificates=[("reporting.internal", "reporting", "service")])
    credentials = load_credentials(write(tmp_path, text))

    assert credentials.identify_token(ALICE.token).principal_id == "alice"
    assert credentials.identify_token(rotated.token).principal_id == "alice"
    assert credentials.identify_token(BILLING.token).role is Role.SERVICE
    assert credentials.identify_token(new_token()) is None
    assert credentials.certificates["reporting.internal"].principal_id == "reporting"
    assert credentials.roles["oncall"] is Role.OPERATOR
    # Only digests are kept.
    assert ALICE.token not in repr(credentials)


@pytest.mark.parametrize(
    ("text", "complaint"),
    [
        (principals_toml([ALICE, ALICE]), "same token digest appears twice"),
        (principals_toml([ALICE, Caller("alice", "operator", new_token())]), "already has role user"),
        (
            principals_toml([], certificates=[("a", "x", "user"), ("a", "y", "user")]),
            "common_name 'a' appears twice",
        ),
        (principals_toml([], certificates=[(" ", "x", "user")]), "common_name must not be empty"),
        ("tokens = 3\n", "must be an array of tables"),
    ],
)
def test_inconsistent_files_are_refused(tmp_path, text, complaint) -> None:
    with pytest.raises(PrincipalsFileError, match=complaint):
        load_credentials(write(tmp_path, text))


def test_a_token_pasted_in_place_of_its_hash_is_refused_without_echoing_it(tmp_path) -> None:
    token = new_token()
    path = write(tmp_path, f'[[tokens]]\nsha256 = "{token}"\nprincipal = "a"\nrole = "user"\n')
    with pytest.raises(PrincipalsFileError) as caught:
        load_credentials(path)
    assert token not in str(caught.value)


def test_hash_token_is_the_sha256_of_a_strong_token() -> None:
    token = new_token()
    assert hash_token(token) == hashlib.sha256(token.encode()).hexdigest()
    with pytest.raises(ValueError, match="at least 32"):
        hash_token("x" * 31)
    with pytest.raises(ValueError, match="may contain only"):
        hash_token("x" * 40 + " y")


def test_the_token_bucket_allows_bursts_and_refills_at_its_rate() -> None:
    clock = FakeMonotonic()
    limiter = RateLimiter(rate_per_second=2.0, burst=3, monotonic=clock)

    assert [limiter.acquire("a") for _ in range(3)] == [0.0, 0.0, 0.0]
    assert limiter.acquire("a") == pytest.approx(0.5)
    assert limiter.acquire("b") == 0.0
    clock.advance(0.5)
    assert limiter.acquire("a") == 0.0
    assert limiter.acquire("a") == pytest.approx(0.5)
    clock.advance(100)  # never more than the burst after a long pause
    assert [limiter.acquire("a") for _ in range(4)][-1] == pytest.approx(0.5)


def test_idle_buckets_are_forgotten() -> None:
    clock = FakeMonotonic()
    limiter = RateLimiter(rate_per_second=1.0, burst=1, monotonic=clock)
    for index in range(5000):
        limiter.acquire(f"user-{index}")
        clock.advance(0.01)
    # Only keys seen within the last burst/rate = 1 s (100 of them) can still hold state.
    assert len(limiter._buckets) <= 1024 + 100


def test_stream_slots_are_counted_per_key_and_released_once() -> None:
    limiter = StreamLimiter(max_per_key=1)
    slot = limiter.acquire("a")
    assert slot is not None
    assert limiter.acquire("a") is None
    assert limiter.acquire("b") is not None
    slot.release()
    slot.release()
    assert limiter.open_streams("a") == 0
    assert limiter.acquire("a") is not None
