"""The wire codec of application services: bodies decoded by the shared strict envelope
(p2p.strictwire), one schema per wire method, errors that name the part and quote at
most 100 characters of what the peer sent; and the same refusals over a real link."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import msgpack
import pytest

from dagrider import Service, local_network, unary
from dagrider.sdk.service_api import (
    NAME_CHARS,
    VALUE_DEPTH,
    WIRE_METHODS,
    BodyError,
    Request,
    decode_batch,
    decode_opened,
    decode_push,
    decode_request,
    decode_stream,
    unpack,
)
from p2p.rpc import RpcRemoteError
from p2p.strictwire import DETAIL_CHARS, VALUE_CHARS

LIMIT = 64 * 1024
LONG = "z" * 20_000  # a peer-chosen value far longer than any error may quote


def packb(value: object) -> bytes:
    data: bytes = msgpack.packb(value, use_bin_type=True)
    return data


def nested(depth: int) -> object:
    value: object = 1
    for _ in range(depth):
        value = [value]
    return value


def refused(call: Any, *args: object) -> BodyError:
    with pytest.raises(BodyError) as info:
        call(*args)
    err = info.value
    assert len(err.detail) <= DETAIL_CHARS
    assert "z" * (VALUE_CHARS + 1) not in str(err), "quoted more than 100 chars of peer data"
    return err


def test_good_bodies_decode_to_typed_requests() -> None:
    call = packb([["kv", "get"], [1, b"k"], {"default": None}])
    assert decode_request(call, LIMIT, "app.call") == Request(
        "kv", "get", [1, b"k"], {"default": None}
    )
    opened = packb([["kv", "scan"], [], {}, 5000])
    assert decode_request(opened, LIMIT, "app.open") == Request("kv", "scan", [], {}, 5000)
    for method in ("app.next", "app.end", "app.cancel"):
        assert decode_stream(packb([7]), LIMIT, method) == 7
    assert decode_push(packb([7, [1, {"a": 2}]]), LIMIT) == (7, [1, {"a": 2}])
    assert decode_opened(packb(3), 64) == 3
    assert decode_batch(packb([[b"\x01", b"\xc0"], True]), LIMIT) == ([b"\x01", b"\xc0"], True)
    # Values as deep as allowed pass, inside a body too.
    assert unpack(packb(nested(VALUE_DEPTH)), LIMIT) == nested(VALUE_DEPTH)
    deep = packb([["kv", "put"], [nested(VALUE_DEPTH)], {}])
    assert decode_request(deep, LIMIT, "app.call").args == [nested(VALUE_DEPTH)]


@pytest.mark.parametrize(
    ("body", "field", "words"),
    [
        (b"\x93\x01", "frame", "not msgpack"),  # truncated
        (packb([["kv", "get"], [], {}]) + b"\x00", "frame", "trailing bytes"),
        (packb(msgpack.ExtType(1, b"\x80\x04")), "frame", "not msgpack"),  # a pickle's way in
        (packb({1: 2}), "frame", "not msgpack"),  # integer map keys
        (packb(LONG), "frame", "app.call takes [target, args, kwargs]"),
        (packb([["kv", "get"], [], {}, 5]), "frame", "app.call takes [target, args, kwargs]"),
        (packb(["kv.get", [], {}]), "target", "expected an array"),
        (packb([["kv"], [], {}]), "target", "expected [service, method]"),
        (packb([[LONG, "get"], [], {}]), "target.service", "exceeds 64"),
        (packb([["kv", ""], [], {}]), "target.method", "must not be empty"),
        (packb([["kv", b"get"], [], {}]), "target.method", "expected a string"),
        (packb([["kv", "get"], {"a": 1}, {}]), "args", "expected an array"),
        (packb([["kv", "get"], [], [1]]), "kwargs", "expected a map"),
        (packb([["kv", "get"], [], {b"raw": 1}]), "kwargs", "not a keyword name"),
        (packb([["kv", "get"], [], {"not a name": 1}]), "kwargs", "not a keyword name"),
        (packb([["kv", "get"], [], {LONG: 1}]), "kwargs", "not a keyword name"),
        (packb([["kv", "get"], [nested(VALUE_DEPTH + 1)], {}]), "frame", "nested deeper"),
    ],
)
def test_bad_call_bodies_name_the_part(body: bytes, field: str, words: str) -> None:
    err = refused(decode_request, body, LIMIT, "app.call")
    assert err.field == field and words in err.detail, err


def test_open_needs_a_deadline_in_milliseconds() -> None:
    for bad, words in ((-1, "out of range"), (True, "expected an integer"), (1.5, "integer")):
        err = refused(decode_request, packb([["kv", "scan"], [], {}, bad]), LIMIT, "app.open")
        assert err.field == "deadline_ms" and words in err.detail
    err = refused(decode_request, packb([["kv", "scan"], [], {}]), LIMIT, "app.open")
    assert "app.open takes [target, args, kwargs, deadline_ms]" in err.detail


def test_stream_bodies_and_answers() -> None:
    for bad in (0, -3, 2**63, True, "1", None):
        err = refused(decode_stream, packb([bad]), LIMIT, "app.next")
        assert err.field == "stream"
    assert refused(decode_stream, packb([1, 2]), LIMIT, "app.end").field == "frame"
    assert refused(decode_push, packb([1, b"items"]), LIMIT).field == "items"
    assert refused(decode_opened, packb("7"), 64).field == "stream"
    assert refused(decode_batch, packb([[1], False]), LIMIT).field == "items[0]"
    assert refused(decode_batch, packb([[], 0]), LIMIT).field == "done"
    assert refused(decode_batch, packb([[]]), LIMIT).field == "batch"


def test_limits_hold_before_anything_is_built() -> None:
    assert refused(unpack, packb(b"x" * 2000), 1024).field == "frame"
    # Every string, array and map within the frame's limit, nesting within VALUE_DEPTH.
    assert refused(unpack, packb(nested(VALUE_DEPTH + 1)), LIMIT).field == "frame"
    assert refused(unpack, packb(LONG), 1024).field == "frame"
    assert NAME_CHARS == 64


class Echo(Service):
    name = "echo"

    @unary
    async def say(self, word: str = "") -> str:
        return word


def test_a_peer_sending_bad_bodies_gets_bad_request_naming_the_part(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with local_network(tmp_path, members=4) as net:
            a, b = net.nodes[0], net.nodes[1]
            b.services.register(Echo())
            remote = a.services.client(b.key, Echo, timeout=10)
            assert await remote.say(word="hi") == "hi"
            endpoint = a.services.endpoint()
            cases = [
                ("app.call", packb([["echo", "say"], [], {LONG[:60]: 1}]), "arguments"),
                ("app.call", packb([["echo", "say"], [], {"x y": 1}]), "kwargs"),
                ("app.call", packb([[LONG, "say"], [], {}]), "target.service"),
                ("app.call", packb([["echo", "say"], [nested(VALUE_DEPTH + 1)], {}]), "nested"),
                ("app.open", packb([["echo", "say"], [], {}, -1]), "deadline_ms"),
                ("app.next", packb(["s"]), "stream"),
                ("app.push", packb([1, 2]), "items"),
                ("app.cancel", packb(LONG), "frame"),
            ]
            for method, body, words in cases:
                assert method in WIRE_METHODS
                with pytest.raises(RpcRemoteError) as info:
                    await endpoint.call(b.key, method, body, timeout=10)
                err = info.value
                assert err.code == "bad-request", (method, err)
                assert words in err.message, (method, err.message)
                assert len(err.message) <= 300
                assert "z" * (VALUE_CHARS + 1) not in err.message
            # The service still answers afterwards.
            assert await remote.say("again") == "again"

    asyncio.run(scenario())
