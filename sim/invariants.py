"""Invariant checkers over the outputs of a simulated run."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from dagrider.messages import Digest


@dataclass(frozen=True)
class Verdict:
    name: str
    ok: bool
    detail: str = ""


def agreement(logs: Mapping[int, Sequence[Digest]]) -> Verdict:
    """Agreement and total order: every correct log is a prefix of the longest one."""
    if not logs:
        return Verdict("agreement", True, "no correct nodes")
    longest_node = max(logs, key=lambda k: len(logs[k]))
    longest = logs[longest_node]
    for node, log in logs.items():
        for i, d in enumerate(log):
            if longest[i] != d:
                return Verdict(
                    "agreement",
                    False,
                    f"node {node} and node {longest_node} differ at log index {i}",
                )
    lengths = sorted(len(log) for log in logs.values())
    return Verdict("agreement", True, f"log lengths {lengths[0]}..{lengths[-1]}")


def integrity(logs: Mapping[int, Sequence[Digest]]) -> Verdict:
    """No vertex is ordered twice by any correct node."""
    for node, log in logs.items():
        if len(set(log)) != len(log):
            return Verdict("integrity", False, f"node {node} ordered a vertex twice")
    return Verdict("integrity", True)


def validity(
    proposed: Mapping[Digest, tuple[int, int]],
    logs: Mapping[int, Sequence[Digest]],
) -> Verdict:
    """Every vertex in ``proposed`` (by correct nodes) is ordered by every correct node."""
    if not logs:
        return Verdict("validity", True, "no correct nodes")
    missing: list[tuple[int, int, int]] = []
    for node, log in logs.items():
        seen = set(log)
        for d, (rnd, source) in proposed.items():
            if d not in seen:
                missing.append((node, rnd, source))
    if missing:
        node, rnd, source = min(missing)
        return Verdict(
            "validity",
            False,
            f"{len(missing)} missing, e.g. node {node} lacks the vertex of ({rnd}, {source})",
        )
    return Verdict("validity", True, f"all {len(proposed)} vertices proposed by correct nodes")
