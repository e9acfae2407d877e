"""Rankings in worker processes of this machine (executor.PoolExecutor): order, errors, BLAS threads, same result."""
from __future__ import annotations

import os
import signal
import time

import numpy as np
import pytest
import scipy.linalg

from onnxprune.analysis import find_groups
from onnxprune.compress import CompressOptions, first_pass, load_inputs
from onnxprune.executor import LocalExecutor, PoolExecutor
from onnxprune.plan import Target, rank_groups

from conftest import SAMPLES


def _square_and_pid(offset, item):
    return item * item + offset, os.getpid()


def _blas_threads(_context, _item):
    from threadpoolctl import threadpool_info

    return [entry["num_threads"] for entry in threadpool_info() if entry["user_api"] == "blas"]


def _ignores_ctrl_c(_context, _item):
    import signal

    return signal.getsignal(signal.SIGINT) is signal.SIG_IGN


def _fails(_context, item):
    if item == 3:
        raise ValueError("item 3 is bad")
    return item


def test_results_come_back_in_item_order_from_other_processes():
    done = []
    got = PoolExecutor(workers=2).map(_square_and_pid, list(range(10)), context=1,
                                      on_done=lambda i, r: done.append(i))
    assert [value for value, _ in got] == [i * i + 1 for i in range(10)]
    assert sorted(done) == list(range(10))
    assert {pid for _, pid in got} != {os.getpid()}


def test_each_worker_holds_its_share_of_the_blas_threads(monkeypatch):
    monkeypatch.setattr("onnxprune.executor.cpu_cores", lambda: 4)
    threads = PoolExecutor(workers=2).map(_blas_threads, [0, 1])
    assert all(t == [2] * len(t) and t for t in threads)


def _threads_after_blas(_context, _item):
    a = np.ones((64, 64))
    scipy.linalg.cho_factor(a @ a.T + 64 * np.eye(64), lower=True)
    return len(os.listdir("/proc/self/task"))


@pytest.mark.skipif(not os.path.isdir("/proc/self/task"), reason="needs Linux's /proc")
def test_workers_with_one_blas_thread_start_no_threads_and_the_parent_keeps_its_limit(monkeypatch):
    """The limit comes with the fork: set in a worker, it restarted OpenBLAS's thread pool there (threads that spin
    beside the first tasks)."""
    from threadpoolctl import threadpool_limits

    monkeypatch.setattr("onnxprune.executor.cpu_cores", lambda: 2)
    with threadpool_limits(2, user_api="blas"):
        before = _blas_threads(None, None)
        assert PoolExecutor(workers=2).map(_threads_after_blas, [0, 1, 2]) == [1, 1, 1]
        assert _blas_threads(None, None) == before


def test_ctrl_c_is_left_to_the_parent():
    """Workers ignore SIGINT (a terminal's Ctrl-C reaches them too): the parent's KeyboardInterrupt stops the pool
    and the command prints one line, not a traceback per worker."""
    assert PoolExecutor(workers=2).map(_ignores_ctrl_c, [0, 1, 2]) == [True, True, True]


def test_a_worker_error_is_raised_here_with_the_workers_traceback_as_its_cause():
    from onnxprune.workers import WorkerTraceback

    with pytest.raises(ValueError, match="item 3 is bad") as raised:
        PoolExecutor(workers=2).map(_fails, list(range(6)))
    cause = raised.value.__cause__
    assert isinstance(cause, WorkerTraceback) and "in _fails" in str(cause) and "item 3 is bad" in str(cause)


def _dies(_context, item):
    if item == 1:
        os._exit(3)
    if item == 2:
        os.kill(os.getpid(), signal.SIGKILL)
    return item


class _Unpicklable(Exception):
    def __reduce__(self):
        raise TypeError("no")


def _raises_unpicklable(_context, item):
    raise _Unpicklable(f"item {item}")


def _slow_or_failing(_context, item):
    if item == 0:
        time.sleep(60)
    raise ValueError("item 1 is bad")


def _children() -> set[int]:
    """This process's child processes, zombies included (Linux's /proc)."""
    path = f"/proc/self/task/{os.getpid()}/children"
    if not os.path.exists(path):
        pytest.skip("needs Linux's /proc/PID/task/TID/children")
    with open(path) as f:
        return {int(pid) for pid in f.read().split()}


def test_a_worker_that_dies_is_an_error_here_not_a_hang():
    """A worker that exits without its result is reported with how it ended; one killed outright (the kernel's
    out-of-memory killer sends SIGKILL) as a MemoryError, which the command line reports as such."""
    from onnxprune.workers import WorkerError

    before = _children()
    with pytest.raises(WorkerError, match="exit status 3"):
        PoolExecutor(workers=2).map(_dies, [0, 1])
    with pytest.raises(MemoryError, match="SIGKILL"):
        PoolExecutor(workers=2).map(_dies, [0, 2])
    assert _children() <= before


def test_an_error_that_cannot_be_pickled_comes_back_by_name():
    with pytest.raises(RuntimeError, match="_Unpicklable: item"):
        PoolExecutor(workers=2).map(_raises_unpicklable, [0, 1])


def test_an_error_stops_the_other_workers_at_once():
    before, start = _children(), time.monotonic()
    with pytest.raises(ValueError, match="item 1 is bad"):
        PoolExecutor(workers=2).map(_slow_or_failing, [0, 1])
    assert time.monotonic() - start < 30
    assert _children() <= before


def test_workers_are_reaped_after_a_map():
    before = _children()
    got = PoolExecutor(workers=2).map(_square_and_pid, list(range(5)), context=0)
    assert [value for value, _ in got] == [0, 1, 4, 9, 16]
    assert _children() <= before and not _children() & {pid for _, pid in got}


def test_the_heap_goes_back_to_the_system_before_the_fork(monkeypatch):
    """Freed memory is trimmed once per map, before the workers fork (they would otherwise grow their temporaries
    in the inherited heap), when there is enough of it to pay for the trim; a map that runs here trims nothing."""
    from onnxprune.executor import TRIM_FROM

    calls = []
    monkeypatch.setattr("onnxprune.executor.return_free_heap", lambda: calls.append(os.getpid()) or True)
    monkeypatch.setattr("onnxprune.executor.free_heap", lambda: TRIM_FROM)
    PoolExecutor(workers=2).map(_square_and_pid, list(range(4)), context=0)
    assert calls == [os.getpid()]
    PoolExecutor(workers=2).map(_square_and_pid, [1], context=0)
    assert calls == [os.getpid()]
    monkeypatch.setattr("onnxprune.executor.free_heap", lambda: TRIM_FROM - 1)
    PoolExecutor(workers=2).map(_square_and_pid, list(range(4)), context=0)
    assert calls == [os.getpid()]
    monkeypatch.setattr("onnxprune.executor.free_heap", lambda: None)   # no glibc to ask: trim as before
    PoolExecutor(workers=2).map(_square_and_pid, list(range(4)), context=0)
    assert calls == [os.getpid()] * 2


def test_returning_the_free_heap_works_with_glibc():
    import platform

    from onnxprune.heap import free_heap, return_free_heap

    if platform.libc_ver()[0] != "glibc":
        pytest.skip("not glibc")
    assert return_free_heap() is True
    blocks = [bytearray(64 << 10) for _ in range(256)]   # under the mmap threshold: on the heap
    held = free_heap()
    if held is None:
        pytest.skip("glibc before 2.33: no mallinfo2")
    del blocks[::2]
    assert free_heap() >= held + 100 * (64 << 10)


def test_one_item_runs_here():
    assert PoolExecutor(workers=2).map(_square_and_pid, [3], context=0) == [(9, os.getpid())]


def test_rankings_in_workers_equal_those_in_this_process():
    model, data = SAMPLES / "zoo" / "resnet_bottleneck.ts.onnx", SAMPLES / "zoo" / "resnet_bottleneck.npz"
    options = CompressOptions(target=Target("flops", 0.5))
    loaded = load_inputs(model, data, options)
    analysis = find_groups(loaded.model, loaded.shapes)
    stats = first_pass(loaded, analysis, options).collect().total()
    pooled = rank_groups(loaded.model, analysis, stats, executor=PoolExecutor(workers=2))
    here = rank_groups(loaded.model, analysis, stats, executor=LocalExecutor())
    assert len(pooled) == len(here) > 2
    for a, b in zip(pooled, here):
        assert a.group.id == b.group.id
        np.testing.assert_array_equal(a.order, b.order)
        # scores far below the largest (1e-20 of it) carry BLAS threads' round-off relatively larger; the order,
        # which ties them below 1e-9 of the largest (solvers/ties.py), is equal above
        np.testing.assert_allclose(a.scores, b.scores, rtol=1e-12, atol=1e-12 * b.scores.max())
        np.testing.assert_allclose(a.curve, b.curve, rtol=1e-12)
