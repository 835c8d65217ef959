"""Aggregated votes (wire version 2): one ``Votes`` frame carries every ECHO/READY of a
step. It must count exactly like the lone votes it replaces, and the codec must refuse
anything malformed or of another wire version with a clear error."""

from __future__ import annotations

import random

import msgpack
import pytest
from dagbuilder import faults, make_vertex
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis_budget import examples

from dagrider.codec import MAX_VOTES_PER_MESSAGE, T_ECHO, T_VOTES, VERSION, Codec, encode
from dagrider.effects import Broadcast, Delivered, Effect, Misbehaviour, Proposed, Send
from dagrider.errors import DecodeError
from dagrider.messages import (
    CoinShareMsg,
    Echo,
    Ready,
    Val,
    Vertex,
    VertexRequest,
    Votes,
    genesis,
)
from dagrider.params import Limits
from dagrider.rbc import ReliableBroadcast, coalesce_votes, pack_votes

N = 7
CODEC = Codec(N, Limits())


def digest(tag: int) -> bytes:
    return bytes([tag]) * 32


def vertex(source: int, tag: bytes = b"") -> Vertex:
    strong = genesis(N)[: 2 * faults(N) + 1]
    return make_vertex(1, source, strong, block=(b"payload" + tag,))


# -- codec --------------------------------------------------------------------------------


def test_votes_round_trip_and_keep_their_order() -> None:
    msg = Votes(((3, 1, digest(1)), (2, 0, digest(2))), ((3, 1, digest(1)),))
    assert CODEC.decode(encode(msg)) == msg


def frame(**fields: object) -> bytes:
    body: dict[str, object] = {"t": T_VOTES, "v": VERSION, "e": [], "y": []}
    body.update(fields)
    data: bytes = msgpack.packb(body, use_bin_type=True)
    return data


def error_of(data: bytes) -> DecodeError:
    with pytest.raises(DecodeError) as info:
        CODEC.decode(data)
    return info.value


@pytest.mark.parametrize(
    ("fields", "where"),
    [
        ({}, "echoes"),  # no vote at all
        ({"e": "votes"}, "echoes"),
        ({"y": {"a": 1}}, "readies"),
        ({"e": [[1, 2]]}, "echoes[0]"),
        ({"e": [[1, 2, digest(1)], [1, 2, b"short"]]}, "echoes[1].digest"),
        ({"y": [[1, N, digest(1)]]}, "readies[0].source"),
        ({"y": [[-1, 0, digest(1)]]}, "readies[0].round"),
        ({"e": [[True, 0, digest(1)]]}, "echoes[0].round"),
        ({"e": [[1, 0, "x" * 8]]}, "echoes[0].digest"),
    ],
)
def test_a_bad_votes_frame_names_the_field(fields: dict[str, object], where: str) -> None:
    assert error_of(frame(**fields)).field == where


def test_too_many_votes_in_one_frame_is_refused() -> None:
    half = MAX_VOTES_PER_MESSAGE // 2 + 1
    vote = [1, 0, digest(1)]
    err = error_of(frame(e=[vote] * half, y=[vote] * half))
    assert err.field == "echoes" and str(MAX_VOTES_PER_MESSAGE) in err.reason


@pytest.mark.parametrize("version", [1, VERSION + 1])
def test_another_wire_version_is_a_clear_error_naming_both(version: int) -> None:
    body = {"t": T_ECHO, "v": version, "r": 1, "s": 0, "d": digest(1)}
    err = error_of(msgpack.packb(body, use_bin_type=True))
    assert err.field == "v"
    assert f"version {version}" in err.reason and f"speaks version {VERSION}" in err.reason


def test_an_old_node_s_frame_is_reported_not_counted() -> None:
    """A member still on version 1 is not mixed in silently: its votes do not count and
    every frame produces a misbehaviour report that says why."""
    from test_process import Cluster

    p = Cluster(4).procs[0]
    old = msgpack.packb({"t": T_ECHO, "v": 1, "r": 1, "s": 1, "d": digest(1)}, use_bin_type=True)
    out = p.receive_bytes(1, old)
    assert len(out) == 1 and isinstance(out[0], Misbehaviour)
    assert "wire version 1" in out[0].reason
    assert p.rbc.instance_count() == 0


# -- coalescing ---------------------------------------------------------------------------


def test_coalesce_merges_a_step_s_votes_into_one_frame_in_place() -> None:
    v = vertex(0)
    effects: list[Effect] = [
        Proposed(v),
        Broadcast(Val(v)),
        Broadcast(Echo(1, 0, v.digest)),
        Send(2, VertexRequest(1, 3, digest(3))),
        Broadcast(Ready(1, 2, digest(2))),
        Broadcast(CoinShareMsg.__new__(CoinShareMsg)),
        Broadcast(Echo(1, 4, digest(4))),
    ]
    out = coalesce_votes(effects)
    assert out[:2] == effects[:2]
    assert out[2] == Broadcast(Votes(((1, 0, v.digest), (1, 4, digest(4))), ((1, 2, digest(2)),)))
    assert out[3:] == [effects[3], effects[5]]


def test_a_lone_vote_or_none_is_left_alone() -> None:
    lone: list[Effect] = [Broadcast(Echo(1, 0, digest(1))), Delivered(vertex(1))]
    assert coalesce_votes(lone) is lone
    assert coalesce_votes([]) == []
    assert pack_votes([]) == []


def test_a_huge_step_is_split_into_frames_within_the_limit() -> None:
    votes: list[Echo | Ready] = [Echo(r, 0, digest(1)) for r in range(MAX_VOTES_PER_MESSAGE + 5)]
    frames = pack_votes(votes)
    assert [len(m.echoes) for m in frames if isinstance(m, Votes)] == [MAX_VOTES_PER_MESSAGE, 5]
    for m in frames:
        CODEC.decode(encode(m))  # every frame is within the decoder's limits


# -- Votes count exactly like lone votes --------------------------------------------------

vote_items = st.tuples(
    st.sampled_from(["echo", "ready"]),
    st.integers(0, N - 1),  # voter
    st.integers(0, 2),  # source of the instance
    st.integers(0, 2),  # digest tag: conflicting votes included
)


def lone(kind: str, source: int, tag: int) -> Echo | Ready:
    cls = Echo if kind == "echo" else Ready
    return cls(1, source, digest(tag))


@settings(max_examples=examples(8), deadline=None)
@given(st.lists(vote_items, max_size=60), st.integers(1, 8), st.randoms(use_true_random=False))
def test_votes_frames_and_lone_votes_give_the_same_effects_and_state(
    items: list[tuple[str, int, int, int]], chunk: int, rng: random.Random
) -> None:
    """One process fed lone ECHO/READY messages and another fed the same votes packed
    into Votes frames (consecutive votes of one voter, as a step would send them) emit the
    same effects in the same order and end in the same state."""
    me = 6
    a, b = ReliableBroadcast(me, N, faults(N)), ReliableBroadcast(me, N, faults(N))
    # Both hold the VALs of sources 0..2, so that deliveries happen too.
    for s in range(3):
        v = vertex(s)
        assert a.on_val(s, v) == b.on_val(s, v)
    items = [x for x in items if x[1] != me]
    out_a: list[Effect] = []
    out_b: list[Effect] = []
    i = 0
    while i < len(items):
        voter = items[i][1]
        group = [items[i]]
        while len(group) < chunk and i + len(group) < len(items):
            nxt = items[i + len(group)]
            if nxt[1] != voter:
                break
            group.append(nxt)
        i += len(group)
        msgs = [lone(kind, s, tag) for kind, _, s, tag in group]
        # A step's frame lists its echoes before its readies: feed the lone votes so too.
        msgs.sort(key=lambda m: isinstance(m, Ready))
        for m in msgs:
            out_a += a.on_echo(voter, m) if isinstance(m, Echo) else a.on_ready(voter, m)
        for frame_msg in pack_votes(msgs):
            if isinstance(frame_msg, Votes):
                out_b += b.on_votes(voter, CODEC.decode(encode(frame_msg)))  # type: ignore[arg-type]
            elif isinstance(frame_msg, Echo):
                out_b += b.on_echo(voter, frame_msg)
            else:
                out_b += b.on_ready(voter, frame_msg)
    assert out_a == out_b
    assert a.sent_votes() == b.sent_votes()
    assert a.proven_round() == b.proven_round() and a.proven_own_round() == b.proven_own_round()
    del rng


def test_conflicting_votes_inside_one_frame_are_reported_and_the_first_counts() -> None:
    rbc = ReliableBroadcast(0, N, faults(N))
    frame_msg = Votes(((1, 2, digest(1)), (1, 2, digest(9)), (1, 2, digest(1))), ())
    out = rbc.on_votes(3, frame_msg)
    assert [e.reason for e in out if isinstance(e, Misbehaviour)] == ["conflicting ECHO"]


def test_a_votes_frame_can_complete_a_delivery() -> None:
    """2f+1 READYs arriving in Votes frames deliver, and the missing payload is asked
    from the voters by digest."""
    rbc = ReliableBroadcast(0, N, faults(N))
    v = vertex(3)
    out: list[Effect] = []
    for voter in (1, 2, 4, 5, 6):
        out += rbc.on_votes(voter, Votes(((1, 3, v.digest),), ((1, 3, v.digest),)))
    assert any(isinstance(e, Broadcast) and e.msg == Ready(1, 3, v.digest) for e in out)
    # Our READY went out at f+1 = 3 READYs; with it, the 5th (2f+1) came from voter 5.
    asked = sorted(e.to for e in out if isinstance(e, Send))
    assert asked == [1, 2, 4, 5]
    delivered = rbc.on_response(4, v)
    assert [e for e in delivered if isinstance(e, Delivered)] == [Delivered(v)]
