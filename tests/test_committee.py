"""Committee and key files: strict validation, round trips, permissions, keygen."""

from __future__ import annotations

import copy
import hashlib
import itertools
import json
import os
import stat
from collections.abc import Callable
from functools import cache
from pathlib import Path
from typing import Any

import pytest

from dagrider.coin import CoinSecretShare, make_share, verify_share
from dagrider.committee import Committee, Member, NodeSecret
from dagrider.errors import CommitteeError
from dagrider.group import Q
from dagrider.keygen import generate, write_committee_dir

LOCAL_4 = Path(__file__).resolve().parent.parent / "configs" / "local-4"


def seeded_random(seed: int) -> Callable[[int], bytes]:
    """A reproducible stand-in for os.urandom."""
    counter = itertools.count()

    def random_bytes(size: int) -> bytes:
        block = seed.to_bytes(8, "big") + next(counter).to_bytes(8, "big")
        return hashlib.shake_256(block).digest(size)

    return random_bytes


@cache
def generated(n: int = 4, seed: int = 1) -> tuple[Committee, tuple[NodeSecret, ...]]:
    addresses = [f"127.0.0.1:{9000 + i}" for i in range(n)]
    committee, secrets = generate(n, seeded_random(seed), addresses=addresses)
    return committee, tuple(secrets)


def committee_doc(n: int = 4) -> dict[str, Any]:
    return generated(n)[0].to_dict(note="test")


def mutated(change: Callable[[dict[str, Any]], None], n: int = 4) -> dict[str, Any]:
    doc = copy.deepcopy(committee_doc(n))
    change(doc)
    return doc


# ----------------------------------------------------------------------- committee


def test_properties() -> None:
    committee = generated(7)[0]
    assert (committee.n, committee.f, committee.quorum, committee.small_quorum) == (7, 2, 5, 3)
    assert committee.member(3).node_id == 3
    assert committee.node_id_of(committee.members[5].identity_key) == 5
    assert committee.node_id_of(b"\x00" * 32) is None
    with pytest.raises(CommitteeError, match="node id 7"):
        committee.member(7)
    assert committee.coin_public_key().threshold == 3
    assert committee.coin_public_key() is committee.coin_public_key()


def test_dict_round_trip_keeps_everything() -> None:
    committee = generated(7)[0]
    again = Committee.from_dict(json.loads(json.dumps(committee.to_dict(note="hi"))))
    assert again == committee
    assert again.committee_id == committee.committee_id
    assert again.members[2].address == "127.0.0.1:9002"


def test_committee_id_covers_keys_and_f_but_not_addresses() -> None:
    committee = generated(4)[0]
    assert len(committee.committee_id) == 32
    moved = Committee(
        members=tuple(Member(m.node_id, m.identity_key, m.coin_key) for m in committee.members),
        f=committee.f,
    )
    assert moved.committee_id == committee.committee_id
    other_identity = mutated(lambda d: d["members"][0].update(identity_key="11" * 32))
    assert Committee.from_dict(other_identity).committee_id != committee.committee_id
    assert generated(4, seed=2)[0].committee_id != committee.committee_id


def _set_member(index: int, field: str, value: object) -> Callable[[dict[str, Any]], None]:
    return lambda d: d["members"][index].__setitem__(field, value)


def _drop_last_member_keep_f(d: dict[str, Any]) -> None:
    d["members"].pop()
    d["coin_keys"].pop()


def _swap_ids(d: dict[str, Any]) -> None:
    d["members"][0]["node_id"], d["members"][1]["node_id"] = 1, 0


def _trim_to_one(d: dict[str, Any]) -> None:
    d["f"] = 0
    del d["members"][1:]
    del d["coin_keys"][1:]


REFUSALS: dict[str, tuple[Callable[[dict[str, Any]], None], str]] = {
    "missing field": (lambda d: d.pop("f"), r"missing field\(s\) f"),
    "extra field": (lambda d: d.update(extra=1), r"unknown field\(s\) extra"),
    "wrong format": (lambda d: d.update(format="x/1"), "format must be"),
    "f not int": (lambda d: d.update(f="1"), "f must be an integer, got '1'"),
    "f is bool": (lambda d: d.update(f=True), "f must be an integer, got True"),
    "members not list": (lambda d: d.update(members={}), "members must be a list"),
    "member not object": (
        lambda d: d["members"].__setitem__(0, 5),
        r"members\[0\] must be an object, got int",
    ),
    "member missing key": (
        lambda d: d["members"][1].pop("identity_key"),
        r"members\[1\]: missing field\(s\) identity_key",
    ),
    "member extra field": (
        _set_member(2, "coin_key", "00"),
        r"members\[2\]: unknown field\(s\) coin_key",
    ),
    "bad hex": (
        _set_member(1, "identity_key", "zz" * 32),
        r"members\[1\].identity_key is not valid hex",
    ),
    "bad length": (_set_member(1, "identity_key", "ab" * 31), "must be 32 bytes, got 31"),
    "hex not string": (lambda d: d["coin_keys"].__setitem__(0, 7), r"coin_keys\[0\] must be a hex"),
    "bad address": (_set_member(0, "address", "localhost"), "host:port"),
    "duplicate identity": (
        lambda d: d["members"][3].update(identity_key=d["members"][0]["identity_key"]),
        "duplicate identity key [0-9a-f]{64} at node 3",
    ),
    "duplicate coin key": (
        lambda d: d["coin_keys"].__setitem__(2, d["coin_keys"][1]),
        "duplicate coin key [0-9a-f]{64} at node 2",
    ),
    "identity coin key": (
        lambda d: d["coin_keys"].__setitem__(1, (1).to_bytes(32, "little").hex()),
        "coin key of node 1 is not a valid group point: 01",
    ),
    "garbage coin key": (
        lambda d: d["coin_keys"].__setitem__(0, "ff" * 32),
        "coin key of node 0 is not a valid group point",
    ),
    "n below 4": (_drop_last_member_keep_f, "n=3 is below the minimum of 4"),
    "n of one": (_trim_to_one, "n=1 is below the minimum of 4"),
    "n not 3f+1": (lambda d: d.update(f=2), r"n=4 is not 3f\+1=7 for f=2"),
    "share count": (lambda d: d["coin_keys"].pop(), "coin share count 3 does not match n=4"),
    "ids out of order": (_swap_ids, r"members\[0\].node_id is 1; node ids must be 0..n-1"),
    "id not int": (_set_member(0, "node_id", "0"), r"members\[0\].node_id must be an integer"),
}


@pytest.mark.parametrize("case", sorted(REFUSALS))
def test_from_dict_refuses(case: str) -> None:
    change, message = REFUSALS[case]
    with pytest.raises(CommitteeError, match=message):
        Committee.from_dict(mutated(change))


def test_from_dict_refuses_non_object() -> None:
    with pytest.raises(CommitteeError, match="must be a JSON object, got list"):
        Committee.from_dict([])  # type: ignore[arg-type]


def test_constructor_enforces_the_same_rules() -> None:
    members = generated(4)[0].members
    with pytest.raises(CommitteeError, match="3f"):
        Committee(members=members, f=2)
    with pytest.raises(CommitteeError, match="duplicate identity"):
        Committee(
            members=(*members[:3], Member(3, members[0].identity_key, members[3].coin_key)), f=1
        )
    with pytest.raises(CommitteeError, match="coin_key must be 32 bytes"):
        Member(0, members[0].identity_key, b"\x01")


def test_dump_load_round_trip(tmp_path: Path) -> None:
    committee = generated(4)[0]
    path = tmp_path / "committee.json"
    committee.dump(path, note="hello")
    assert Committee.load(path) == committee
    assert json.loads(path.read_text())["note"] == "hello"
    with pytest.raises(FileExistsError):
        committee.dump(path)
    generated(4, seed=3)[0].dump(path, overwrite=True)
    assert Committee.load(path) == generated(4, seed=3)[0]


def test_load_refuses_unreadable_and_non_json(tmp_path: Path) -> None:
    with pytest.raises(CommitteeError, match="cannot read"):
        Committee.load(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(CommitteeError, match="not valid JSON"):
        Committee.load(bad)


# ----------------------------------------------------------------------- node secrets


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_secret_round_trip_and_mode_0600(tmp_path: Path) -> None:
    committee, secrets = generated(4)
    path = tmp_path / "node-1.key"
    old_umask = os.umask(0)  # the mode must not depend on a friendly umask
    try:
        secrets[1].dump(path, note="n")
    finally:
        os.umask(old_umask)
    assert _mode(path) == 0o600
    assert NodeSecret.load(path, committee) == secrets[1]


def test_secret_overwrite_keeps_mode_0600(tmp_path: Path) -> None:
    path = tmp_path / "node-0.key"
    path.write_text("old")
    path.chmod(0o644)
    secret = generated(4)[1][0]
    with pytest.raises(FileExistsError):
        secret.dump(path)
    assert path.read_text() == "old"
    secret.dump(path, overwrite=True)
    assert _mode(path) == 0o600
    assert NodeSecret.load(path) == secret


def _secret_doc() -> dict[str, Any]:
    return generated(4)[1][0].to_dict()


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda d: d.pop("coin_share"), r"missing field\(s\) coin_share"),
        (lambda d: d.update(seed="00"), r"unknown field\(s\) seed"),
        (lambda d: d.update(format="dagrider-committee/1"), "format must be"),
        (lambda d: d.update(identity_seed="xyz"), "identity_seed is not valid hex"),
        (lambda d: d.update(committee_id="00" * 16), "committee_id must be 32 bytes, got 16"),
        (lambda d: d.update(coin_share=Q.to_bytes(32, "little").hex()), "not a reduced scalar"),
        (lambda d: d.update(node_id=-1), "node_id must be a non-negative int"),
    ],
    ids=["missing", "extra", "format", "hex", "length", "scalar", "node-id"],
)
def test_secret_from_dict_refuses(change: Callable[[dict[str, Any]], None], message: str) -> None:
    doc = _secret_doc()
    change(doc)
    with pytest.raises(CommitteeError, match=message):
        NodeSecret.from_dict(doc)


def test_check_secret_accepts_each_own_key() -> None:
    committee, secrets = generated(4)
    for secret in secrets:
        committee.check_secret(secret)


def test_check_secret_refuses_mismatches() -> None:
    committee, secrets = generated(4)
    other_committee = generated(4, seed=2)[0]
    with pytest.raises(CommitteeError, match="committee_id"):
        other_committee.check_secret(secrets[0])
    swapped_seed = NodeSecret(
        0, secrets[1].identity_seed, secrets[0].coin_share, secrets[0].committee_id
    )
    with pytest.raises(CommitteeError, match="identity_seed of node 0 derives key"):
        committee.check_secret(swapped_seed)
    swapped_coin = NodeSecret(
        0, secrets[0].identity_seed, secrets[1].coin_share, secrets[0].committee_id
    )
    with pytest.raises(CommitteeError, match="coin_share of node 0 does not match"):
        committee.check_secret(swapped_coin)
    stranger = NodeSecret(
        4, secrets[0].identity_seed, secrets[0].coin_share, secrets[0].committee_id
    )
    with pytest.raises(CommitteeError, match="node id 4"):
        committee.check_secret(stranger)


def test_load_with_committee_checks_the_key(tmp_path: Path) -> None:
    committee, secrets = generated(4)
    path = tmp_path / "k"
    NodeSecret(0, secrets[1].identity_seed, secrets[0].coin_share, secrets[0].committee_id).dump(
        path
    )
    NodeSecret.load(path)  # well-formed on its own
    with pytest.raises(CommitteeError, match="identity_seed"):
        NodeSecret.load(path, committee)


def test_secret_repr_hides_secrets() -> None:
    secret = generated(4)[1][0]
    assert secret.identity_seed.hex() not in repr(secret)
    assert secret.coin_share.hex() not in repr(secret)


def test_keys_work_with_the_coin() -> None:
    committee, secrets = generated(4)
    pub = committee.coin_public_key()
    secret = CoinSecretShare(1, secrets[1].coin_share)
    share = make_share(secret, committee.members[1].coin_key, 1, committee.committee_id)
    verify_share(pub, share, committee.committee_id)


# ----------------------------------------------------------------------- keygen


@pytest.mark.parametrize("n", [0, 1, 3, 5, 6])
def test_generate_refuses_bad_sizes(n: int) -> None:
    with pytest.raises(CommitteeError, match="3f\\+1"):
        generate(n, seeded_random(1))


def test_generate_is_reproducible_from_its_randomness() -> None:
    first, _ = generate(4, seeded_random(5))
    second, _ = generate(4, seeded_random(5))
    third, _ = generate(4, seeded_random(6))
    assert first == second
    assert first != third
    assert generate(7, seeded_random(5))[0].f == 2


def test_write_committee_dir(tmp_path: Path) -> None:
    committee, secrets = generated(4)
    out = tmp_path / "cluster"
    paths = write_committee_dir(out, committee, secrets, note="TEST")
    assert [p.name for p in paths] == ["committee.json"] + [f"node-{i}.key" for i in range(4)]
    assert Committee.load(out / "committee.json") == committee
    for i in range(4):
        assert _mode(out / f"node-{i}.key") == 0o600
        assert NodeSecret.load(out / f"node-{i}.key", committee) == secrets[i]


def test_write_committee_dir_refuses_to_overwrite(tmp_path: Path) -> None:
    committee, secrets = generated(4)
    write_committee_dir(tmp_path, committee, secrets)
    newer, newer_secrets = generated(4, seed=9)
    (tmp_path / "committee.json").unlink()  # only a key file is in the way now
    with pytest.raises(FileExistsError, match=r"node-0\.key"):
        write_committee_dir(tmp_path, newer, newer_secrets)
    assert not (tmp_path / "committee.json").exists()  # nothing half-written
    assert NodeSecret.load(tmp_path / "node-0.key") == secrets[0]
    write_committee_dir(tmp_path, newer, newer_secrets, overwrite=True)
    assert NodeSecret.load(tmp_path / "node-0.key", newer) == newer_secrets[0]


def test_write_committee_dir_refuses_foreign_secrets(tmp_path: Path) -> None:
    committee = generated(4)[0]
    with pytest.raises(CommitteeError):
        write_committee_dir(tmp_path, committee, generated(4, seed=2)[1])
    assert list(tmp_path.iterdir()) == []


# ----------------------------------------------------------------------- configs/local-4


def test_local_4_config_is_consistent() -> None:
    committee = Committee.load(LOCAL_4 / "committee.json")
    assert committee.n == 4
    assert [m.address for m in committee.members] == [f"127.0.0.1:{7001 + i}" for i in range(4)]
    assert "TEST KEYS" in json.loads((LOCAL_4 / "committee.json").read_text())["note"]
    for i in range(4):
        doc = json.loads((LOCAL_4 / f"node-{i}.key").read_text())
        assert "never use in production" in doc["note"]
        NodeSecret.load(LOCAL_4 / f"node-{i}.key", committee)
