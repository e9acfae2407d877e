"""Where the heavy, independent pieces of a run execute: in this process, or as tasks on a Ray cluster (``--ray``).

An executor maps a function over items and returns the results in item order, whatever order the tasks finish
in, so a result never depends on where or when a task ran. What runs as tasks (README "Running on a cluster"):
the first calibration pass and every error-correcting stage pass, sharded by whole blocks of the calibration
split (``calibration/parallel.py``), the per-group channel rankings (``plan.rank_groups``) and each stage's
re-fits (``sequential._refit_task``). The driver combines
the shards' tree nodes in block order, so the statistics, and the model, are bit for bit those of one process.

``map(fn, items, context=...)`` calls ``fn(context, item)`` for every item; ``context`` goes into Ray's object store
once per map and every task reads it from there. A task whose worker dies is run again (``max_retries``) and
computes the same result: tasks are pure functions of their arguments.
"""
from __future__ import annotations

import contextlib
import os
import pickle
import socket
import time
from typing import Any, Callable, Sequence

from onnxprune import idle_threads
from onnxprune.errors import ClusterError, UsageError, first_line
from onnxprune.heap import free_heap, return_free_heap, reusing_freed_memory
from onnxprune.runtime import cpu_cores
from onnxprune.solvers import backend
from onnxprune.workers import run_forked

CONNECT_TIMEOUT = 5.0   # seconds to reach a cluster's address before giving up (ONNXPRUNE_RAY_CONNECT_TIMEOUT)
MAX_RETRIES = 3         # a task whose worker or node dies is run again this many times
# free heap from which a pool trims it before forking: the YOLOv8n layout detector's 946 MB take 26 ms and save its
# workers seconds of page faults; the orientation classifier's 76 MB take 7 ms of a 0.2 s solve stage and save none
TRIM_FROM = 256 << 20
INSTALL_NOTE = 'install the Ray extra: pip install "onnxprune[ray]"'


class Executor:
    """Runs ``fn(context, item)`` for each item and keeps count of the tasks and the seconds spent in them."""

    kind = "local"
    remote = False          # whether tasks run in other processes (their arguments are pickled)
    ship_data = False       # whether calibration samples travel through the object store (--ray-ship-data)
    address: str | None = None

    def __init__(self) -> None:
        self.tasks = 0
        self.task_seconds = 0.0
        self.last_seconds: list[float] = []   # seconds of each task of the last map, in item order

    def map(self, fn: Callable[[Any, Any], Any], items: Sequence, *, context: Any = None,
            on_done: Callable[[int, Any], None] | None = None) -> list:
        """``[fn(context, item) for item in items]``; ``on_done(i, result)`` as each one finishes."""
        results = []
        self.last_seconds = []
        for i, item in enumerate(items):
            start = time.perf_counter()
            results.append(fn(context, item))
            self.last_seconds.append(time.perf_counter() - start)
            self.tasks += 1
            self.task_seconds += self.last_seconds[-1]
            if on_done:
                on_done(i, results[-1])
        return results

    def put(self, value: Any) -> Any:
        """A handle on ``value`` that tasks can read (:func:`resolve` gives the value back)."""
        return value

    def slots(self) -> int:
        """How many tasks run at once."""
        return 1

    def resources(self) -> dict:
        """Nodes, CPUs and GPUs the tasks can use."""
        return {"nodes": 1, "cpus": cpu_cores(), "gpus": 0}

    def snapshot(self) -> tuple[int, float]:
        """The task count and task seconds so far (for :meth:`report` of what came after)."""
        return self.tasks, self.task_seconds

    def report(self, since: tuple[int, float] = (0, 0.0)) -> dict:
        """What the ``--report`` JSON's ``executor`` key holds: kind, address, nodes, cpus, gpus, and the tasks run
        and seconds spent in them since the :meth:`snapshot` ``since``."""
        return {"kind": self.kind, "address": self.address, **self.resources(), "tasks": self.tasks - since[0],
                "task_seconds": round(self.task_seconds - since[1], 3)}

    def close(self) -> None:
        pass

    def __enter__(self) -> "Executor":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class LocalExecutor(Executor):
    """Everything in this process, one item after another."""


class PoolExecutor(Executor):
    """Items in worker processes of this machine, forked per map: ``workers`` of them (default: one per core), each
    with ``workers``-th of the cores as BLAS threads, and the items handed out in order as workers free up. The
    workers inherit the items with the fork: only indices go to them and results come back (a YOLOv8n's rankings
    would otherwise pickle 250 MB of Gram matrices through pipes).

    Small linear algebra (the rankings of a network's many narrow groups) runs several times faster on one BLAS
    thread per core than on all cores at once, and much faster still on a loaded machine, where threaded BLAS
    waits on busy cores. The results are those of one process with that many BLAS threads. Without fork (not
    Linux), with one item or one core, or with the solver on torch (``--backend``: its thread pool and CUDA context
    do not survive a fork), the items run in this process.

    The workers are bare forks (``workers.py``), not a ``multiprocessing`` pool."""

    def __init__(self, workers: int | None = None):
        super().__init__()
        self.workers = max(workers or cpu_cores(), 1)

    def slots(self) -> int:
        return self.workers

    def map(self, fn: Callable[[Any, Any], Any], items: Sequence, *, context: Any = None,
            on_done: Callable[[int, Any], None] | None = None) -> list:
        count = min(self.workers, len(items))
        if count < 2 or not hasattr(os, "fork") or not backend.active().forkable:
            return super().map(fn, items, context=context, on_done=on_done)
        results: list = [None] * len(items)
        self.last_seconds = [0.0] * len(items)
        free = free_heap()
        if free is None or free >= TRIM_FROM:
            return_free_heap()
        # the workers inherit the BLAS limit with the fork: set in a worker instead, it would start OpenBLAS's threads
        # anew there, which spin beside the tasks for their first 0.1 s; lifted here only after the tasks (lifting it
        # starts this process's threads, which spin as long)
        # the workers inherit the heap's reuse too (heap.py): their rankings' temporaries (VGG-16's 4 608-column ones:
        # solve stage 36.3-38.0 -> 35.9-36.1 s in turn, the same bytes); this process frees little meanwhile.
        # Closing the generator on an error here stops its workers at once
        with backend.blas_threads(max(cpu_cores() // count, 1)), reusing_freed_memory(hand_back=False), \
                contextlib.closing(run_forked(fn, context, items, count)) as returned:
            for index, value, seconds in returned:
                results[index], self.last_seconds[index] = value, seconds
                self.tasks += 1
                self.task_seconds += seconds
                if on_done:
                    on_done(index, value)
        return results


def resolve(value: Any) -> Any:
    """The value behind a handle of :meth:`Executor.put` (a Ray ObjectRef inside a task), else ``value`` itself."""
    if type(value).__name__ == "ObjectRef":
        import ray

        return ray.get(value)
    return value


def import_ray():
    """The ``ray`` module; UsageError (one line) when the extra is not installed."""
    try:
        import ray
    except ImportError:
        raise UsageError("--ray needs Ray, which is not installed.", note=INSTALL_NOTE) from None
    return ray


class RayExecutor(Executor):
    """Tasks on a Ray cluster: ``address`` is ``auto`` (RAY_ADDRESS, or the cluster ``ray start`` runs on this
    machine), ``HOST:PORT`` (the head's GCS address), or ``local[:N]`` (a Ray started for this run with N CPUs,
    default all, and stopped at :meth:`close`). A process already connected (``ray.init`` done) keeps its cluster.

    Each task takes one CPU, or one GPU with ``gpus_per_task=1`` (``--provider cuda``), and is retried up to
    ``max_retries`` times when its worker or node dies. ClusterError (exit 5) when the cluster cannot be reached
    within ``connect_timeout`` seconds or lacks GPUs."""

    kind = "ray"
    remote = True

    def __init__(self, address: str = "auto", *, gpus_per_task: int = 0, ship_data: bool = False,
                 connect_timeout: float | None = None, max_retries: int = MAX_RETRIES):
        super().__init__()
        ray = import_ray()
        self._ray = ray
        self.gpus_per_task = gpus_per_task
        self.ship_data = ship_data
        self.max_retries = max_retries
        self._owned = False
        timeout = connect_timeout if connect_timeout is not None else \
            float(os.environ.get("ONNXPRUNE_RAY_CONNECT_TIMEOUT", CONNECT_TIMEOUT))
        if ray.is_initialized():
            self.address = _connected_address(ray, address)
        else:
            self.address = _connect(ray, address, timeout)
            self._owned = True
        try:
            gpus = self.resources()["gpus"]
            if gpus_per_task and gpus < gpus_per_task:
                raise ClusterError(f"the Ray cluster at {self.address} has no GPU, and --provider cuda/tensorrt runs "
                                   "every task on one.", note="add GPU nodes, or use --provider cpu")
            self._task = ray.remote(_run_task).options(num_cpus=1, num_gpus=gpus_per_task, max_retries=max_retries,
                                                       retry_exceptions=False)
        except BaseException:
            self.close()
            raise
        self._cwd = os.getcwd()

    def put(self, value: Any) -> Any:
        return self._ray.put(value)

    def slots(self) -> int:
        res = self._ray.cluster_resources()
        return max(int(res.get("GPU", 0) if self.gpus_per_task else res.get("CPU", 1)), 1)

    def resources(self) -> dict:
        res = self._ray.cluster_resources()
        nodes = sum(1 for node in self._ray.nodes() if node.get("Alive"))
        return {"nodes": nodes, "cpus": int(res.get("CPU", 0)), "gpus": int(res.get("GPU", 0))}

    def map(self, fn: Callable[[Any, Any], Any], items: Sequence, *, context: Any = None,
            on_done: Callable[[int, Any], None] | None = None) -> list:
        ray = self._ray
        if not items:
            return []
        shared = ray.put(context)
        refs = [self._task.remote(fn, shared, item, self._cwd) for item in items]
        where = {ref: i for i, ref in enumerate(refs)}
        results: list = [None] * len(refs)
        self.last_seconds = [0.0] * len(refs)
        pending = list(refs)
        try:
            while pending:
                done, pending = ray.wait(pending, num_returns=1)
                for ref in done:
                    payload, seconds = self._get(ref)
                    value = results[where[ref]] = pickle.loads(payload)
                    self.last_seconds[where[ref]] = seconds
                    self.tasks += 1
                    self.task_seconds += seconds
                    if on_done:
                        on_done(where[ref], value)
        except BaseException:
            for ref in pending:
                try:
                    ray.cancel(ref, force=True)
                except Exception:  # noqa: BLE001 - best effort: the task may have finished meanwhile
                    pass
            raise
        return results

    def _get(self, ref) -> tuple[Any, float]:
        """A task's result; its own error as raised in the task, or ClusterError when Ray lost it for good."""
        exceptions = self._ray.exceptions
        try:
            return self._ray.get(ref)
        except exceptions.RayTaskError as exc:
            cause = getattr(exc, "cause", None)
            if isinstance(cause, BaseException):
                raise cause from None   # the task's own error (an onnxprune error stays one line)
            raise
        except exceptions.RayError as exc:  # worker or node died more than max_retries times, object lost, ...
            raise ClusterError(f"a Ray task failed {self.max_retries + 1} times ({type(exc).__name__}: "
                               f"{first_line(exc, 200)}).",
                               note="check the cluster ('ray status') and its nodes' memory, then run again") from None

    def close(self) -> None:
        if self._owned:
            self._owned = False
            self._ray.shutdown()


def _run_task(fn: Callable[[Any, Any], Any], context: Any, item: Any, cwd: str) -> tuple[Any, float]:
    """One task: ``fn(context, item)`` in the driver's working directory where this node has it (so relative
    ``--data`` paths resolve as on the driver), and the seconds it took."""
    start = time.perf_counter()
    here = os.getcwd()
    moved = cwd != here and os.path.isdir(cwd)
    if moved:
        os.chdir(cwd)
    try:
        value = fn(context, item)
    finally:
        if moved:
            os.chdir(here)
    # pickled here and unpickled by the driver: its arrays are then its own and writable (Ray hands out
    # zero-copy, read-only views of the object store), and statistics are summed into them in place
    return pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL), time.perf_counter() - start


def parse_local(address: str) -> int | None | bool:
    """``local`` → None (all CPUs), ``local:N`` → N; False when ``address`` is not a local one."""
    text = address.strip()
    if text != "local" and not text.startswith("local:"):
        return False
    count = text[len("local:"):] if ":" in text else ""
    if count == "":
        return None
    if not count.isdigit() or int(count) < 1:
        raise UsageError(f"--ray '{address}': N of local:N must be a positive number of CPUs.",
                         note="for example --ray local:4")
    return int(count)


def _worker_environment() -> dict | None:
    """What the workers of a cluster started elsewhere get from this process's environment: OpenBLAS's idle-thread
    wait (``idle_threads``), which their stage passes need as much as this process does; a local cluster's workers
    inherit it anyway."""
    wait = os.environ.get(idle_threads.VARIABLE)
    return None if wait is None else {"env_vars": {idle_threads.VARIABLE: wait}}


def _connect(ray, address: str, timeout: float) -> str:
    """Start or join the cluster named by ``address``; the address it is known by."""
    import logging

    local = parse_local(address)
    if local is not False:
        try:
            ray.init(address="local", num_cpus=local, include_dashboard=False, log_to_driver=False,
                     logging_level=logging.WARNING)
        except Exception as exc:  # noqa: BLE001 - Ray raises several types when it cannot start
            raise ClusterError(f"cannot start a local Ray instance ({type(exc).__name__}: {first_line(exc, 200)}).",
                               note="check 'ray start --head' works on this machine") from None
        return f"local:{local or int(ray.cluster_resources().get('CPU', 0))}"
    text = address.strip()
    if text.startswith("ray://"):
        raise UsageError(f"--ray '{address}': Ray Client addresses (ray://) are not supported.",
                         note="give the head's GCS address HOST:PORT (6379 unless 'ray start --port' said otherwise)")
    target = _auto_address(ray) if text == "auto" else text
    host, port = _host_port(target, address)
    _reachable(host, port, timeout)
    if _on_this_machine(host):
        _token_auth_as_for_auto()
    try:
        ray.init(address=f"{host}:{port}", log_to_driver=False, logging_level=logging.WARNING,
                 runtime_env=_worker_environment())
    except Exception as exc:  # noqa: BLE001
        raise ClusterError(f"cannot connect to the Ray cluster at {host}:{port} ({type(exc).__name__}: "
                           f"{first_line(exc, 200)}).",
                           note="check the address and that this machine runs the same Ray and Python versions; a "
                                "cluster with token authentication also needs RAY_AUTH_MODE=token and its token "
                                "(RAY_AUTH_TOKEN or ~/.ray/auth_token)") from None
    return f"{host}:{port}"


def _on_this_machine(host: str) -> bool:
    """Whether ``host`` is this machine (a loopback address, or the address Ray gives this node)."""
    try:
        ip = socket.gethostbyname(host)
    except OSError:
        return False
    if ip.startswith("127.") or ip == "::1":
        return True
    try:
        from ray.util import get_node_ip_address

        return ip == get_node_ip_address()
    except Exception:  # noqa: BLE001
        return False


def _token_auth_as_for_auto() -> None:
    """Send this machine's Ray token (if any, and RAY_AUTH_MODE unset) to a cluster on this machine, as Ray does for
    the cluster ``auto`` finds: a ``ray start --head`` run here enables token authentication once a token exists
    (``--ray local`` creates one), and Ray would send none to an address given explicitly. A cluster elsewhere
    gets the token only with RAY_AUTH_MODE=token."""
    if os.environ.get("RAY_AUTH_MODE") is not None:
        return
    try:
        from ray._private.authentication.authentication_token_setup import \
            maybe_enable_token_auth_if_token_available
    except ImportError:  # a Ray without token authentication
        return
    maybe_enable_token_auth_if_token_available(warn_if_disabled=False)


def _auto_address(ray) -> str:
    """RAY_ADDRESS, else the cluster the last ``ray start`` on this machine started; ClusterError when neither."""
    found = os.environ.get("RAY_ADDRESS") or None
    if found is None:
        try:
            from ray._private.services import get_ray_address_from_environment

            found = get_ray_address_from_environment("auto", None)
        except ConnectionError:
            found = None
        except Exception:  # noqa: BLE001 - a private API: without it, only RAY_ADDRESS is looked at
            found = None
    if not found or found == "auto":
        raise ClusterError("--ray auto found no running Ray cluster: RAY_ADDRESS is not set and no 'ray start' "
                           "cluster runs on this machine.",
                           note="start one with 'ray start --head', or give --ray HOST:PORT or --ray local:N")
    return found


def _host_port(target: str, given: str) -> tuple[str, int]:
    host, sep, port = target.strip().rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise UsageError(f"--ray '{given}' is not an address: give auto, HOST:PORT or local[:N].",
                         note="for example --ray 10.0.0.1:6379")
    return host.strip("[]"), int(port)


def _reachable(host: str, port: int, timeout: float) -> None:
    """ClusterError unless a TCP connection to ``host:port`` opens within ``timeout`` seconds (Ray itself would
    retry for minutes)."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            pass
    except socket.timeout:
        reason = f"no answer within {timeout:g} s"
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
    else:
        return
    raise ClusterError(f"cannot reach the Ray cluster at {host}:{port} ({reason.lower()}).",
                       note="check the address and that 'ray start --head' runs there; nothing was computed")


def _connected_address(ray, address: str) -> str:
    try:
        return str(ray.get_runtime_context().gcs_address)
    except Exception:  # noqa: BLE001
        return address


def describe(report: dict) -> str:
    """The compress summary's line for a Ray run (``report``: :meth:`Executor.report`): where the tasks ran, how many."""
    nodes, cpus, gpus = report["nodes"], report["cpus"], report["gpus"]
    return (f"executor: ray at {report['address']} ({nodes} node{'s' if nodes != 1 else ''}, {cpus} CPUs, {gpus} GPUs): "
            f"{report['tasks']} tasks, {report['task_seconds']:.1f} s in tasks")


__all__ = ["Executor", "LocalExecutor", "RayExecutor", "resolve", "import_ray", "describe"]
