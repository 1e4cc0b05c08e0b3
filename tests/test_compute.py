"""ctvol._compute: bounded submission and the clusters started by scheduler_context."""

from __future__ import annotations

from collections.abc import Iterator

import dask
import pytest

from ctvol._compute import LOW_LEVEL_LOG_LENGTH, compute_bounded, scheduler_context


@pytest.mark.parametrize("scheduler", ["threads", "local"])
def test_compute_bounded_builds_items_only_as_slots_free(scheduler: str) -> None:
    built: list[int] = []
    done: list[int] = []
    # Items built and not yet handed back: on a Client the next item is
    # submitted as soon as one finishes, before that one is handed back.
    most = 3 if scheduler == "local" else 2

    def items() -> Iterator[object]:
        for i in range(7):
            assert len(built) - len(done) <= most, "an item was built with 3 in flight"
            built.append(i)
            yield dask.delayed(lambda x: x * x)(i)

    with scheduler_context(scheduler, 2):
        for i, value in compute_bounded(items(), in_flight=3):
            assert value == i * i
            done.append(i)
    assert sorted(done) == list(range(7))


def test_compute_bounded_raises_the_failing_item() -> None:
    def boom(x: int) -> int:
        if x == 1:
            raise ValueError(f"item {x} failed")
        return x

    with pytest.raises(ValueError, match="item 1 failed"):
        list(compute_bounded((dask.delayed(boom)(i) for i in range(3)), in_flight=2))


def test_local_cluster_keeps_short_developer_logs() -> None:
    key = "distributed.admin.low-level-log-length"
    default = dask.config.get(key)
    assert default > LOW_LEVEL_LOG_LENGTH
    with scheduler_context("local", 2) as client:
        logs = client.run(lambda dask_worker: (dask_worker.state.stimulus_log.maxlen,
                                               dask_worker.batched_stream.recent_message_log
                                               .maxlen))
        assert set(logs.values()) == {(LOW_LEVEL_LOG_LENGTH, LOW_LEVEL_LOG_LENGTH)}
        assert client.scheduler_comm.recent_message_log.maxlen == LOW_LEVEL_LOG_LENGTH
        assert {ws.maxlen for ws in client.run_on_scheduler(
            lambda dask_scheduler: [s.recent_message_log
                                    for s in dask_scheduler.stream_comms.values()])
                } == {LOW_LEVEL_LOG_LENGTH}
    assert dask.config.get(key) == default  # restored with the context


def _boom(x: int) -> int:
    raise ValueError(f"item {x} is bad")


@pytest.mark.parametrize("scheduler", ["threads", "local"])
def test_compute_bounded_can_return_failures_per_item(scheduler: str) -> None:
    """errors="return": a failing item yields its exception, the others their results
    (on threads a failing group is recomputed item by item to tell which failed)."""
    import dask

    from ctvol._compute import compute_bounded, scheduler_context

    items = [dask.delayed(_boom if i == 1 else abs)(-i) for i in range(4)]
    with scheduler_context(scheduler, 2):
        got = dict(compute_bounded(iter(items), in_flight=2, errors="return"))
        with pytest.raises(ValueError, match="is bad"):
            dict(compute_bounded(iter(items), in_flight=2))
    assert sorted(got) == [0, 1, 2, 3]
    assert [got[i] for i in (0, 2, 3)] == [0, 2, 3]
    assert isinstance(got[1], ValueError) and "item -1 is bad" in str(got[1])
