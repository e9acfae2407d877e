"""Forked worker processes: ``fn(context, item)`` over items that the workers inherit with the fork.

Each worker is a bare ``os.fork`` that reads task indices from one pipe and writes each result, pickled and preceded
by its length, to another; the items are handed out in order as workers free up. A ``multiprocessing`` pool does the
same with queues and two handler threads, which took 15 of the 40 ms that the orientation classifier lookalike's 20
rankings (0.15 s of tasks per worker) spent starting and stopping its workers. A worker that dies without its result
is an error here (a pool waits for it forever); an error in a task, or Ctrl-C here, kills the other workers at once.
"""
from __future__ import annotations

import os
import pickle
import selectors
import signal
import struct
import time
import traceback
from typing import Any, Callable, Iterator, Sequence


def run_forked(fn: Callable[[Any, Any], Any], context: Any, items: Sequence,
               count: int) -> Iterator[tuple[int, Any, float]]:
    """(index, ``fn(context, items[index])``, seconds) for every item, as ``count`` forked workers return them; a
    task's exception is raised here."""
    workers: list[_Worker] = []
    finished = False
    try:
        for _ in range(count):
            workers.append(_Worker.fork((fn, context, items), workers))
        todo = iter(range(len(items)))
        with selectors.DefaultSelector() as busy:   # the workers running a task
            for worker in workers:
                worker.give(next(todo, None))
                busy.register(worker.results, selectors.EVENT_READ, worker)
            for _ in range(len(items)):
                worker = busy.select()[0][0].data
                result = worker.result()
                index = next(todo, None)
                worker.give(index)
                if index is None:
                    busy.unregister(worker.results)
                yield result
        finished = True
    finally:
        for worker in workers:
            worker.stop(kill=not finished)


class WorkerError(RuntimeError):
    """A forked worker ended without returning its task's result."""


class WorkerTraceback(Exception):
    """The traceback of a task's exception in the worker that raised it: the cause of that exception here (``-v``
    prints it)."""

    def __str__(self) -> str:
        return "\n" + self.args[0].rstrip()


_STOP = -1
_INDEX = struct.Struct("<q")


class _Worker:
    """A forked worker process: it reads task indices from one pipe and writes each result, pickled and preceded
    by its length, to another, until it reads ``_STOP``."""

    def __init__(self, pid: int, tasks: int, results: int):
        self.pid, self.tasks, self.results = pid, tasks, results
        self.stopping = False

    @classmethod
    def fork(cls, work: tuple, others: Sequence[_Worker]) -> _Worker:
        """A worker for ``work`` = (fn, context, items), which it inherits; ``others``, the workers forked before,
        whose pipe ends it must not hold (their ends of file would wait for it)."""
        task_read, task_write = os.pipe()
        result_read, result_write = os.pipe()
        pid = os.fork()
        if pid == 0:   # the worker: never returns
            code = 1
            try:
                os.close(task_write)
                os.close(result_read)
                for other in others:
                    os.close(other.tasks)
                    os.close(other.results)
                signal.signal(signal.SIGINT, signal.SIG_IGN)   # Ctrl-C is the parent's: it stops the workers
                _serve(work, task_read, result_write)
                code = 0
            finally:
                os._exit(code)
        os.close(task_read)
        os.close(result_write)
        return cls(pid, task_write, result_read)

    def give(self, index: int | None) -> None:
        """Send the worker the task ``index``, or tell it to stop (None): it exits once it reads that."""
        if index is None:
            if self.stopping:
                return
            self.stopping = True
        os.write(self.tasks, _INDEX.pack(_STOP if index is None else index))

    def result(self) -> tuple[int, Any, float]:
        """The (index, value, seconds) of the worker's task; the task's exception raised here, or :meth:`_lost`'s
        when the worker ended without a result."""
        header = _read_exactly(self.results, _INDEX.size)
        payload = None if header is None else _read_exactly(self.results, _INDEX.unpack(header)[0])
        if payload is None:
            raise self._lost()
        index, value, seconds, error = pickle.loads(payload)
        if error is not None:
            exc, text = error
            raise exc from WorkerTraceback(text)
        return index, value, seconds

    def _lost(self) -> Exception:
        """What to raise for a worker that ended without its task's result, once it has ended: MemoryError where
        it was killed (SIGKILL: the kernel's out-of-memory killer, most likely), else :class:`WorkerError`."""
        _, status = os.waitpid(self.pid, 0)
        self.pid = 0
        if os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL:
            return MemoryError("a worker process was killed (SIGKILL), most likely for lack of memory.")
        how = (f"signal {os.WTERMSIG(status)}" if os.WIFSIGNALED(status)
               else f"exit status {os.waitstatus_to_exitcode(status)}")
        return WorkerError(f"a worker process ended without its task's result ({how}).")

    def stop(self, kill: bool = False) -> None:
        """Tell the worker to stop and reap it; ``kill`` (after an error or Ctrl-C here) ends it at once instead of
        after the task it runs."""
        if self.pid:
            try:
                if kill:
                    os.kill(self.pid, signal.SIGKILL)
                else:
                    self.give(None)
            except OSError:   # it has ended already (its pipe is closed): reap it
                pass
            os.waitpid(self.pid, 0)
            self.pid = 0
        os.close(self.tasks)
        os.close(self.results)


def _serve(work: tuple, tasks: int, results: int) -> None:
    """A worker's loop: run ``fn(context, items[index])`` for each index read from ``tasks`` and write the result."""
    fn, context, items = work
    while True:
        header = _read_exactly(tasks, _INDEX.size)
        index = _STOP if header is None else _INDEX.unpack(header)[0]
        if index == _STOP:
            return
        start = time.perf_counter()
        try:
            reply = (index, fn(context, items[index]), time.perf_counter() - start, None)
            payload = pickle.dumps(reply, protocol=pickle.HIGHEST_PROTOCOL)
        except Exception as exc:   # raised in the parent instead, with this traceback as its cause
            payload = pickle.dumps((index, None, 0.0, (_picklable(exc), traceback.format_exc())),
                                   protocol=pickle.HIGHEST_PROTOCOL)
        _write_all(results, _INDEX.pack(len(payload)) + payload)


def _picklable(exc: Exception) -> Exception:
    """``exc``, or a RuntimeError with its type and message where it cannot be pickled."""
    try:
        pickle.loads(pickle.dumps(exc))
        return exc
    except Exception:
        return RuntimeError(f"{type(exc).__name__}: {exc}")


def _read_exactly(fd: int, size: int) -> bytes | None:
    """``size`` bytes from ``fd``, or None at its end before that many came."""
    chunks, left = [], size
    while left:
        chunk = os.read(fd, left)
        if not chunk:
            return None
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]
