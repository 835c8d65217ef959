"""Peer key files: written 0600, read back exactly, refused with a reason when wrong."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest

from dagrider.errors import CommitteeError
from dagrider.node.peer_key import PEER_KEY_FORMAT, PeerKey


def test_round_trip_and_mode(tmp_path: Path) -> None:
    key = PeerKey.generate()
    path = tmp_path / "peer.key"
    key.dump(path, "test")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    again = PeerKey.load(path)
    assert again == key
    assert again.identity().public_key == key.identity().public_key
    assert key.identity_seed.hex() not in repr(key)
    with pytest.raises(FileExistsError):
        key.dump(path)


@pytest.mark.parametrize(
    ("doc", "message"),
    [
        ({"format": "dagrider-node-key/1", "identity_seed": "00" * 32}, "format"),
        ({"format": PEER_KEY_FORMAT}, "identity_seed"),
        ({"format": PEER_KEY_FORMAT, "identity_seed": "xyz"}, "hex string"),
        ({"format": PEER_KEY_FORMAT, "identity_seed": "00" * 31}, "32 bytes"),
        ({"format": PEER_KEY_FORMAT, "identity_seed": "00" * 32, "coin": 1}, "coin"),
    ],
)
def test_bad_files_are_refused(tmp_path: Path, doc: dict[str, object], message: str) -> None:
    path = tmp_path / "bad.key"
    path.write_text(json.dumps(doc))
    with pytest.raises(CommitteeError) as info:
        PeerKey.load(path)
    assert message in str(info.value)
