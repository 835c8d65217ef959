"""The threshold coin: agreement of every f+1 subset, refusal of forgeries, laziness."""

from __future__ import annotations

import ast
import dataclasses
import hashlib
import itertools
from collections.abc import Callable
from functools import cache
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis_budget import examples

from dagrider import coin
from dagrider.coin import (
    CoinPublicKey,
    CoinSecretShare,
    CoinShare,
    WaveCoin,
    combine,
    deal,
    leader_of,
    make_share,
    verify_share,
    wave_base,
)
from dagrider.errors import InvalidShare
from dagrider.group import Q, hash_to_point, mult, scalar_from_int, scalar_to_int

DOMAIN = hashlib.blake2b(b"test committee", digest_size=32).digest()
OTHER_DOMAIN = hashlib.blake2b(b"another committee", digest_size=32).digest()


def seeded_random(seed: int) -> Callable[[int], bytes]:
    """A reproducible stand-in for os.urandom."""
    counter = itertools.count()

    def random_bytes(size: int) -> bytes:
        block = seed.to_bytes(8, "big") + next(counter).to_bytes(8, "big")
        return hashlib.shake_256(block).digest(size)

    return random_bytes


@cache
def dealing(n: int, seed: int = 1) -> tuple[CoinPublicKey, tuple[CoinSecretShare, ...]]:
    pub, secrets = deal(n, (n - 1) // 3 + 1, seeded_random(seed))
    return pub, tuple(secrets)


@cache
def honest_shares(
    n: int, wave: int, domain: bytes = DOMAIN, seed: int = 1
) -> tuple[CoinShare, ...]:
    pub, secrets = dealing(n, seed)
    return tuple(make_share(s, pub.verification_keys[s.node_id], wave, domain) for s in secrets)


def expected_value(n: int, wave: int, domain: bytes = DOMAIN, seed: int = 1) -> bytes:
    """The coin computed the dealer's way: recover x = P(0) from the scalars, hash h_w^x.

    Independent of the exponent interpolation under test, so a wrong Lagrange
    coefficient cannot make both sides agree.
    """
    pub, secrets = dealing(n, seed)
    points = [(s.node_id + 1, scalar_to_int(s.scalar)) for s in secrets[: pub.threshold]]
    x = 0
    for i, y in points:
        lam = 1
        for j, _ in points:
            if j != i:
                lam = lam * j * pow(j - i, -1, Q) % Q
        x = (x + y * lam) % Q
    s = mult(wave_base(domain, wave), scalar_from_int(x))
    return hashlib.blake2b(s, digest_size=32, person=coin._VALUE_PERSON).digest()


def f_of(n: int) -> int:
    return (n - 1) // 3


# ----------------------------------------------------------------------- agreement


@given(
    n=st.sampled_from([4, 7, 10]),
    wave=st.integers(min_value=0, max_value=3),
    data=st.data(),
)
@settings(max_examples=examples(1.2), deadline=None)
def test_any_threshold_subset_gives_the_same_value(n: int, wave: int, data: st.DataObject) -> None:
    shares = honest_shares(n, wave)
    order = data.draw(st.permutations(range(n)))
    subset = [shares[i] for i in order[: f_of(n) + 1]]
    assert combine(dealing(n)[0], subset, DOMAIN) == expected_value(n, wave)


@given(n=st.sampled_from([4, 7, 10]), data=st.data())
@settings(max_examples=examples(0.8), deadline=None)
def test_wave_coin_agrees_for_any_arrival_order(n: int, data: st.DataObject) -> None:
    pub = dealing(n)[0]
    order = data.draw(st.permutations(range(n)))
    collector = WaveCoin(pub, 2, DOMAIN)
    for i in order:
        assert collector.add(honest_shares(n, 2)[i]) == []
    assert collector.value == expected_value(n, 2)


def test_all_subsets_agree_exhaustively_for_n4() -> None:
    pub, shares = dealing(4)[0], honest_shares(4, 1)
    values = {combine(pub, list(c), DOMAIN) for c in itertools.combinations(shares, 2)}
    assert values == {expected_value(4, 1)}


def test_make_share_is_deterministic() -> None:
    pub, secrets = dealing(4)
    first = make_share(secrets[0], pub.verification_keys[0], 9, DOMAIN)
    assert make_share(secrets[0], pub.verification_keys[0], 9, DOMAIN) == first
    assert make_share(secrets[0], pub.verification_keys[0], 10, DOMAIN).challenge != first.challenge


def test_make_share_refuses_a_mismatched_key() -> None:
    pub, secrets = dealing(4)
    with pytest.raises(ValueError, match="does not match"):
        make_share(secrets[0], pub.verification_keys[1], 1, DOMAIN)


# ----------------------------------------------------------------------- forgeries


def _forgeries(n: int, wave: int) -> dict[str, tuple[CoinShare, str]]:
    """Each forged share of signer 0 for ``wave`` with the reason it must be refused."""
    own = honest_shares(n, wave)[0]
    other = honest_shares(n, wave)[1]
    later = honest_shares(n, wave + 1)[0]
    foreign = honest_shares(n, wave, OTHER_DOMAIN)[0]
    z_plus_one = scalar_from_int(scalar_to_int(own.response) + 1)
    identity = (1).to_bytes(32, "little")
    return {
        "wrong share point": (
            dataclasses.replace(own, share=hash_to_point(b"junk")),
            "proof mismatch",
        ),
        "share of another signer": (dataclasses.replace(own, share=other.share), "proof mismatch"),
        "wrong response": (dataclasses.replace(own, response=z_plus_one), "proof mismatch"),
        "wrong challenge": (
            dataclasses.replace(own, challenge=other.challenge),
            "proof mismatch",
        ),
        "share of another wave": (dataclasses.replace(later, wave=wave), "proof mismatch"),
        "share of another committee": (foreign, "proof mismatch"),
        "signed by another index": (dataclasses.replace(other, signer=0), "proof mismatch"),
        "zero response": (dataclasses.replace(own, response=bytes(32)), "proof mismatch"),
        "identity share": (dataclasses.replace(own, share=identity), "not a valid group point"),
        "garbage share": (dataclasses.replace(own, share=b"\xff" * 32), "not a valid group point"),
        "short share": (dataclasses.replace(own, share=own.share[:31]), "wrong length"),
        "long response": (dataclasses.replace(own, response=own.response + b"\0"), "wrong length"),
        "unreduced challenge": (
            dataclasses.replace(own, challenge=(Q + 1).to_bytes(32, "little")),
            "not a reduced scalar",
        ),
    }


FORGERY_NAMES = sorted(_forgeries(4, 1))


@pytest.mark.parametrize("name", FORGERY_NAMES)
def test_verify_share_rejects_forgery(name: str) -> None:
    forged, reason = _forgeries(4, 1)[name]
    with pytest.raises(InvalidShare, match=reason):
        verify_share(dealing(4)[0], forged, DOMAIN)


@pytest.mark.parametrize("name", FORGERY_NAMES)
def test_wave_coin_never_counts_a_forgery(name: str) -> None:
    """For f=1 a counted forgery plus one honest share would already reach t=2."""
    forged, reason = _forgeries(4, 1)[name]
    collector = WaveCoin(dealing(4)[0], 1, DOMAIN)
    reports = collector.add(forged) + collector.add(honest_shares(4, 1)[1])
    assert len(reports) == 1
    assert reports[0][0] == 0
    assert reason in reports[0][1]
    assert collector.value is None
    assert collector.add(honest_shares(4, 1)[2]) == []
    assert collector.value == expected_value(4, 1)


@pytest.mark.parametrize("signer", [4, -1, True, "0"])
def test_bad_signer_index_is_rejected(signer: Any) -> None:
    forged = dataclasses.replace(honest_shares(4, 1)[0], signer=signer)
    with pytest.raises(InvalidShare, match="bad signer index"):
        verify_share(dealing(4)[0], forged, DOMAIN)
    collector = WaveCoin(dealing(4)[0], 1, DOMAIN)
    assert collector.add(forged)[0][1].startswith("bad signer index")


def test_share_of_another_wave_is_reported_not_counted() -> None:
    collector = WaveCoin(dealing(4)[0], 1, DOMAIN)
    reports = collector.add(honest_shares(4, 2)[0])
    assert reports == [(0, "share is for wave 2, not 1")]
    collector.add(honest_shares(4, 1)[1])
    assert collector.value is None
    # The signer was not blocked by the misrouted share: its real one still counts.
    collector.add(honest_shares(4, 1)[0])
    assert collector.value == expected_value(4, 1)


def test_bad_wave_number_is_rejected() -> None:
    forged = dataclasses.replace(honest_shares(4, 1)[0], wave=-1)
    with pytest.raises(InvalidShare, match="bad wave"):
        verify_share(dealing(4)[0], forged, DOMAIN)


# ----------------------------------------------------------------------- thresholds


@pytest.mark.parametrize("n", [4, 7, 10])
def test_f_shares_give_no_value(n: int) -> None:
    pub, shares = dealing(n)[0], honest_shares(n, 1)
    collector = WaveCoin(pub, 1, DOMAIN)
    for share in shares[: f_of(n)]:
        collector.add(share)
        collector.add(share)  # duplicates must not count twice
    assert collector.value is None
    assert collector.verifications == 0
    with pytest.raises(ValueError, match="distinct signers"):
        combine(pub, list(shares[: f_of(n)]) * 2, DOMAIN)


@given(n=st.sampled_from([4, 7, 10]), data=st.data())
@settings(max_examples=examples(0.8), deadline=None)
def test_f_invalid_plus_f_plus_one_valid_gives_the_right_value(n: int, data: st.DataObject) -> None:
    f = f_of(n)
    pub, shares = dealing(n)[0], honest_shares(n, 3)
    order = data.draw(st.permutations(range(n)))
    byzantine, correct = order[:f], order[f : 2 * f + 1]
    forged = [dataclasses.replace(shares[b], share=shares[order[-1]].share) for b in byzantine]
    arrivals = data.draw(st.permutations(forged + [shares[c] for c in correct]))
    collector = WaveCoin(pub, 3, DOMAIN)
    reported = [signer for share in arrivals for signer, _ in collector.add(share)]
    assert collector.value == expected_value(n, 3)
    assert set(reported) <= set(byzantine)
    assert collector.verifications <= 2 * f + 1


@pytest.mark.parametrize("n", [4, 7, 10])
def test_verification_is_lazy(n: int) -> None:
    f = f_of(n)
    collector = WaveCoin(dealing(n)[0], 1, DOMAIN)
    for count, share in enumerate(honest_shares(n, 1), start=1):
        collector.add(share)
        assert (collector.value is not None) == (count >= f + 1)
    assert collector.verifications == f + 1


def test_second_share_of_a_signer_is_ignored() -> None:
    shares = honest_shares(4, 1)
    forged = dataclasses.replace(shares[0], response=shares[1].response)
    collector = WaveCoin(dealing(4)[0], 1, DOMAIN)
    collector.add(shares[0])
    assert collector.add(forged) == []
    collector.add(shares[1])
    assert collector.value == expected_value(4, 1)


def test_combine_refuses_mixed_waves_and_invalid_chosen_share() -> None:
    pub = dealing(4)[0]
    with pytest.raises(ValueError, match="mixed"):
        combine(pub, [honest_shares(4, 1)[0], honest_shares(4, 2)[1]], DOMAIN)
    with pytest.raises(ValueError, match="no shares"):
        combine(pub, [], DOMAIN)
    forged, _ = _forgeries(4, 1)["wrong response"]
    with pytest.raises(InvalidShare):
        combine(pub, [forged, honest_shares(4, 1)[1]], DOMAIN)
    with pytest.raises(InvalidShare):
        combine(pub, list(honest_shares(4, 1)[:2]), OTHER_DOMAIN)
    # only the first threshold distinct signers are used: a later forgery is ignored
    assert combine(pub, [*honest_shares(4, 1)[:2], forged], DOMAIN) == expected_value(4, 1)


# ----------------------------------------------------------------------- separation


def test_values_differ_across_waves() -> None:
    values = {expected_value(4, w) for w in range(1, 9)}
    assert len(values) == 8
    assert combine(dealing(4)[0], list(honest_shares(4, 5)[:2]), DOMAIN) == expected_value(4, 5)


def test_values_differ_across_committees() -> None:
    pub = dealing(4)[0]
    here = combine(pub, list(honest_shares(4, 1)[:2]), DOMAIN)
    there = combine(pub, list(honest_shares(4, 1, OTHER_DOMAIN)[:2]), OTHER_DOMAIN)
    assert here != there
    other_pub = dealing(4, seed=2)[0]
    third = combine(other_pub, list(honest_shares(4, 1, DOMAIN, seed=2)[:2]), DOMAIN)
    assert third not in (here, there)


def test_share_does_not_verify_under_another_domain() -> None:
    with pytest.raises(InvalidShare, match="proof mismatch"):
        verify_share(dealing(4)[0], honest_shares(4, 1)[0], OTHER_DOMAIN)


# ----------------------------------------------------------------------- leader, dealing


def test_leader_of_is_value_mod_n() -> None:
    assert leader_of((7).to_bytes(32, "big"), 4) == 3
    assert leader_of(b"\xff" * 32, 1) == 0
    leaders = {leader_of(expected_value(4, w), 4) for w in range(1, 40)}
    assert leaders == {0, 1, 2, 3}
    with pytest.raises(ValueError):
        leader_of(b"\x00" * 31, 4)
    with pytest.raises(ValueError):
        leader_of(b"\x00" * 32, 0)


def test_deal_validates_arguments() -> None:
    with pytest.raises(ValueError, match="threshold"):
        deal(4, 5, seeded_random(1))
    with pytest.raises(ValueError, match="threshold"):
        deal(4, 0, seeded_random(1))
    with pytest.raises(ValueError, match="returned 3 bytes"):
        deal(4, 2, lambda size: b"abc")


def test_deal_redraws_a_zero_secret() -> None:
    calls = itertools.count()
    real = seeded_random(7)

    def zero_first(size: int) -> bytes:
        return bytes(size) if next(calls) == 0 else real(size)

    pub, secrets = deal(4, 2, zero_first)
    assert next(calls) > 3  # the zero-secret polynomial was thrown away
    assert all(scalar_to_int(s.scalar) != 0 for s in secrets)
    shares = [make_share(s, pub.verification_keys[s.node_id], 1, DOMAIN) for s in secrets]
    assert combine(pub, shares[:2], DOMAIN) == combine(pub, shares[2:], DOMAIN)


def test_public_key_validation() -> None:
    pub = dealing(4)[0]
    with pytest.raises(ValueError, match="threshold"):
        CoinPublicKey(pub.verification_keys, 5)
    with pytest.raises(ValueError, match=r"verification_keys\[1\]"):
        CoinPublicKey((pub.verification_keys[0], b"\x00" * 32), 1)


def test_secret_share_repr_hides_the_scalar() -> None:
    secret = dealing(4)[1][0]
    assert secret.scalar.hex() not in repr(secret)


def test_coin_module_is_pure() -> None:
    tree = ast.parse(Path(coin.__file__).read_text(encoding="utf-8"))
    forbidden = {"asyncio", "socket", "time", "random", "sqlite3", "os", "secrets"}
    imported: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            imported.add(node.module.split(".")[0])
    assert not imported & forbidden
