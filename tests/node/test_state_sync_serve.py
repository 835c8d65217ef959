"""What a member answers to a state-sync log request, with its real store.

A member whose log does not reach the asker's certificate yet (it lags the checkpoint
the asker syncs to) must say it does not hold the range (``LogPruned``), not send the
rows up to its head marked "done": those fail the asker's chain check, and the asker
bans an honest peer. The simulator's shell answers the same way
(``sim/state_sync.py``).
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from dagrider.statesync import LogPruned, LogRequest, LogRows, StateMessage, decode
from node.test_restored_backup import HANG_LIMIT, committee


def test_a_member_answers_only_ranges_its_log_reaches(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def scenario() -> None:
        async with committee(tmp_path) as nodes:
            server = nodes[0]._member()
            for k in range(8):
                nodes[k % 4].submit(b"serve-%d" % k)
            async with asyncio.timeout(HANG_LIMIT):
                while server.store.log_head() < 7:  # all eight ordered and stored
                    await asyncio.sleep(0.05)
            sent: list[tuple[int, StateMessage]] = []
            sync = server.state_sync
            monkeypatch.setattr(sync, "_send", lambda peer, data: sent.append((peer, decode(data))))
            ordering = server.store.ordering_state()
            assert ordering is not None
            head = ordering.next_index
            sync._dispatch(1, LogRequest(0, head + 1_000))  # beyond our log
            sync._dispatch(2, LogRequest(0, head))  # within it
            assert sent[0] == (1, LogPruned(None))
            peer, answer = sent[1]
            assert peer == 2 and isinstance(answer, LogRows) and answer.first == 0
            assert answer.rows and all(r.index < head for r in answer.rows)

    asyncio.run(scenario())
