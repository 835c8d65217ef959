"""Generate a committee and its node key files (trusted-dealer setup).

The threshold coin needs a dealer that knows every share once; this is that dealer.
It is meant for tests, local clusters and small deployments where one operator runs
the ceremony and then hands each node its own key file. Randomness is a parameter so
that tests and the simulator can generate reproducible committees from a seed.

Command line: ``dagrider keygen --nodes 4 --out DIR [--base-port 7001]``.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path

from nacl.signing import SigningKey

from dagrider.coin import deal
from dagrider.committee import Committee, Member, NodeSecret
from dagrider.errors import CommitteeError

COMMITTEE_FILE = "committee.json"


def generate(
    n: int,
    random_bytes: Callable[[int], bytes] = os.urandom,
    *,
    addresses: Sequence[str] | None = None,
) -> tuple[Committee, list[NodeSecret]]:
    """Draw identity seeds and deal the coin for ``n = 3f+1`` members.

    ``addresses``, if given, assigns ``host:port`` to the members in order.
    """
    if not isinstance(n, int) or n < 4 or (n - 1) % 3 != 0:
        raise CommitteeError(f"committee size n={n!r} must be 3f+1 with f >= 1 (4, 7, 10, ...)")
    if addresses is not None and len(addresses) != n:
        raise CommitteeError(f"got {len(addresses)} addresses for n={n} members")
    f = (n - 1) // 3
    seeds = [_seed(random_bytes) for _ in range(n)]
    coin_public, coin_secrets = deal(n, f + 1, random_bytes)
    members = tuple(
        Member(
            node_id=i,
            identity_key=_identity_key(seeds[i]),
            coin_key=coin_public.verification_keys[i],
            address=None if addresses is None else addresses[i],
        )
        for i in range(n)
    )
    committee = Committee(members=members, f=f)
    secrets = [
        NodeSecret(
            node_id=i,
            identity_seed=seeds[i],
            coin_share=coin_secrets[i].scalar,
            committee_id=committee.committee_id,
        )
        for i in range(n)
    ]
    return committee, secrets


def key_file_name(node_id: int) -> str:
    """``node-<i>.key``: the name a node looks for in a committee directory."""
    return f"node-{node_id}.key"


def write_committee_dir(
    out: Path,
    committee: Committee,
    secrets: Sequence[NodeSecret],
    note: str | None = None,
    *,
    overwrite: bool = False,
) -> list[Path]:
    """Write ``committee.json`` and every ``node-<i>.key`` (mode 0600) into ``out``.

    Everything is checked before anything is written: each secret must belong to its
    seat, and without ``overwrite`` no target may exist, so a refused run leaves the
    directory untouched instead of half-replaced with keys of a new committee.
    """
    for secret in secrets:
        committee.check_secret(secret)
    out = Path(out)
    targets = [out / COMMITTEE_FILE] + [out / key_file_name(s.node_id) for s in secrets]
    existing = [str(p) for p in targets if p.exists()]
    if existing and not overwrite:
        raise FileExistsError(f"refusing to overwrite {', '.join(existing)}")
    out.mkdir(parents=True, exist_ok=True)
    committee.dump(targets[0], note, overwrite=overwrite)
    for secret, path in zip(secrets, targets[1:], strict=True):
        secret.dump(path, note, overwrite=overwrite)
    return targets


def _seed(random_bytes: Callable[[int], bytes]) -> bytes:
    seed = random_bytes(32)
    if len(seed) != 32:
        raise ValueError(f"random_bytes(32) returned {len(seed)} bytes")
    return seed


def _identity_key(seed: bytes) -> bytes:
    return bytes(SigningKey(seed).verify_key)
