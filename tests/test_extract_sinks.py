"""Rows kept in memory wait for their device-to-host copies only when the next batch arrives (or at
the end), so that a GPU always has the next forward queued: checked with rows that log their wait."""

from __future__ import annotations

import torch

from featwrap.extraction.sinks import MemorySink


class InFlight(dict[str, torch.Tensor]):
    """Rows whose copies are in flight until :meth:`wait` (as ``HostRows`` from a GPU)."""

    def __init__(self, log: list[str], name: str, **rows: torch.Tensor) -> None:
        super().__init__(rows)
        self.log, self.name = log, name

    def wait(self) -> None:
        self.log.append(self.name)


def test_a_batch_is_waited_for_when_the_next_one_arrives() -> None:
    log: list[str] = []
    sink = MemorySink(5)
    sink.write([0, 1], InFlight(log, "a", x=torch.tensor([[0.0], [1.0]])))
    assert log == []  # its forward's successor is not queued yet: no wait
    sink.write([3, 4], InFlight(log, "b", x=torch.tensor([[3.0], [4.0]])))
    assert log == ["a"]
    sink.commit(0, (0, 5), [{"index": 2, "id": "2", "error": "unreadable"}])
    sink.close()
    assert log == ["a", "b"]
    assert torch.equal(sink.result()["x"], torch.tensor([[0.0], [1.0], [3.0], [4.0]]))
    assert log == ["a", "b"]  # each batch waited for once


def test_result_puts_the_last_batch_in_place() -> None:
    log: list[str] = []
    sink = MemorySink(2)
    sink.write([0, 1], InFlight(log, "a", x=torch.ones(2, 3)))
    assert torch.equal(sink.result()["x"], torch.ones(2, 3))
    assert log == ["a"]
