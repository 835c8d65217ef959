"""A mesh peer with ``[discovery] mdns = true`` and no bootstrap peer, run inside a lab
namespace by ``test_mdns.py``; it talks JSON lines.

    python mdns_peer.py WORK_DIR LISTEN_IP PORT

Prints ``{"key": hex}`` once started, then ``{"linked": [hex, ...]}`` as soon as it has
a link to another peer (or an empty list after 30 s). Commands on stdin:
``{"put": hex}`` -> ``{"cid": cid}``; ``{"get": cid}`` -> ``{"data": hex}`` (fetched
through the DHT and the content layer); ``{"quit": true}`` stops it.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sys
from pathlib import Path

from dagrider import Peer
from dagrider.node.peer_key import PeerKey


def _config(work: Path, ip: str, port: int) -> Path:
    work.mkdir(parents=True, exist_ok=True)
    key = work / "peer.key"
    if not key.exists():
        PeerKey.generate().dump(key, "TEST KEY of a NAT lab peer")
    path = work / "peer.toml"
    path.write_text(
        "\n".join(
            [
                "[node]",
                'role = "peer"',
                f'key_file = "{key}"',
                f'data_dir = "{work / "data"}"',
                f'listen = "{ip}:{port}"',
                "[discovery]",
                "mdns = true",
                "[log]",
                'level = "warning"',
                "",
            ]
        )
    )
    return path


def _say(**fields: object) -> None:
    print(json.dumps(fields), flush=True)


async def main(work: Path, ip: str, port: int) -> None:
    async with Peer(_config(work, ip, port)) as peer:
        _say(key=peer.key.hex())
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 30
        while not peer.network.connected() and loop.time() < deadline:
            await asyncio.sleep(0.05)
        _say(linked=[k.hex() for k in peer.network.connected()])
        while line := await asyncio.to_thread(sys.stdin.readline):
            cmd = json.loads(line)
            if "put" in cmd:
                blob = await peer.content.put(bytes.fromhex(cmd["put"]))
                _say(cid=blob.cid)
            elif "get" in cmd:
                # The mDNS link comes first; the DHT introduction (a Ping each way) may
                # still be in flight on a loaded machine, and a lookup before it finds
                # no provider. Wait until the DHT finds one (a hang limit), then fetch.
                deadline = loop.time() + 30
                while not await peer.content.providers(cmd["get"]) and loop.time() < deadline:
                    await asyncio.sleep(0.2)
                data = b"".join([p async for p in peer.content.read(cmd["get"])])
                _say(data=data.hex())
            else:
                break


if __name__ == "__main__":
    logging.basicConfig(level=logging.ERROR)
    asyncio.run(main(Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])))
