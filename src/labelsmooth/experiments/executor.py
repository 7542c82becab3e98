"""Where a sweep's runs execute: one after another in this process, or in worker processes.

The sweep hands an executor a :class:`RunJob` (what every run shares: the training function,
the model builder, the data and the settings) and the list of :class:`RunTask` to do. The
executor calls ``on_start(task)`` when a run begins and ``on_done(task, record, arrays)`` when it
has finished, always in the calling process. The sweep saves each run from ``on_done``, so files
are written by one process only, atomically, and resume works the same whatever the executor.

* :class:`SerialExecutor` runs the tasks in order in this process (``workers=1``).
* :class:`ProcessExecutor` runs them in a :class:`concurrent.futures.ProcessPoolExecutor` with
  the ``spawn`` start method, one torch thread per worker by default. At most ``workers`` runs
  are in flight at a time, so "running" is exact and Ctrl-C has little to cancel.

* :class:`RayExecutor` runs them as Ray tasks (one CPU, one torch thread each) on a local Ray
  instance it starts, or on a cluster it connects to (``address``); results come back here.

With several runs in flight, the pool and Ray hand out the runs in :class:`DispatchOrder`:
seed by seed, and within a seed the longest expected run first, so the workers finish together.

Another engine implements :class:`RunExecutor`: run every task, call the two callbacks in the
calling process, stop everything and re-raise on the first error or on ``KeyboardInterrupt``.

Results do not depend on the executor: :func:`~labelsmooth.experiments.train.train_run` seeds
everything from the run's seed, so with the same thread count a run gives the same numbers in
any process (the timings aside).
"""

from __future__ import annotations

import abc
import dataclasses
import math
import os
import pickle
import signal
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

__all__ = [
    "DispatchOrder",
    "ProcessExecutor",
    "RayExecutor",
    "RunExecutor",
    "RunJob",
    "RunProgress",
    "RunTask",
    "SerialExecutor",
    "check_device",
    "check_executor",
    "default_workers",
    "make_executor",
    "make_runner",
    "require_ray",
    "run_seconds",
    "with_costs",
]

OnStart = Callable[["RunTask"], None]
OnDone = Callable[["RunTask", dict[str, Any], dict[str, np.ndarray]], None]


@dataclass(frozen=True)
class RunTask:
    """One run of a sweep: its file stem, its setting and its seed.

    Attributes:
        key: the file stem of the run (``eps0.1_seed2``).
        setting: what varies between the runs besides the seed, handed to the job's
            ``train_fn``: the smoothing factor ε (a float) in the sweep, a
            :class:`~labelsmooth.experiments.methods.Method` in the method comparison. Hashable:
            runs of the same setting share a measured time (:class:`DispatchOrder`).
        seed: the training seed.
        cost: the run's expected seconds when known beforehand (runs of the same setting in the
            output directory), else None; it only orders the dispatch.
    """

    key: str
    setting: Any
    seed: int
    cost: float | None = None


@dataclass(frozen=True)
class RunJob:
    """What every run of a sweep shares; calling it with a task trains that run.

    Attributes:
        train_fn: ``train_fn(build, splits, smoothing, seed, settings, progress=...)`` returning
            ``(record, arrays)`` (:func:`~labelsmooth.experiments.train.train_run`).
        build: zero-argument callable returning a fresh model.
        splits: the data.
        settings: the training settings.

    To run in worker processes the job must pickle, and its functions must be importable there
    (defined at module level, not a lambda or a closure).
    """

    train_fn: Callable[..., tuple[dict[str, Any], dict[str, np.ndarray]]]
    build: Callable[[], Any]
    splits: Any
    settings: Any

    def __call__(
        self, task: RunTask, progress: Any = None
    ) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        return self.train_fn(
            self.build, self.splits, task.setting, task.seed, self.settings, progress=progress
        )


class RunExecutor(abc.ABC):
    """Runs the tasks of a sweep; see the module docstring for the contract."""

    #: a short name for messages and the saved configuration
    name: str = "executor"
    #: how many runs may be in flight at once
    workers: int = 1

    @abc.abstractmethod
    def run(
        self,
        job: RunJob,
        tasks: Sequence[RunTask],
        on_start: OnStart,
        on_done: OnDone,
        *,
        epoch_progress: Callable[[RunTask], Any] | None = None,
    ) -> None:
        """Run every task. ``on_start``/``on_done`` are called in this process.

        ``epoch_progress(task)`` may return a per-epoch progress object (``update``,
        ``set_postfix``, ``close``) for executors that can tick one; others ignore it.
        On the first failure, or on ``KeyboardInterrupt``, stop every run still going and
        re-raise; runs already reported through ``on_done`` are kept by the caller.
        """


class SerialExecutor(RunExecutor):
    """Every run in this process, one after another (``workers=1``)."""

    name = "serial"
    workers = 1

    def run(
        self,
        job: RunJob,
        tasks: Sequence[RunTask],
        on_start: OnStart,
        on_done: OnDone,
        *,
        epoch_progress: Callable[[RunTask], Any] | None = None,
    ) -> None:
        for task in tasks:
            on_start(task)
            bar = epoch_progress(task) if epoch_progress is not None else None
            try:
                record, arrays = job(task, progress=bar)
            finally:
                if bar is not None:
                    bar.close()
            on_done(task, record, arrays)


class DispatchOrder:
    """The order in which parallel workers take the runs: seed by seed, longest expected first.

    The runs come in waves, one per seed in the order given (the sweeps list seeds outer), and
    a worker that frees up takes a run of the earliest wave with runs left, so an interrupted
    sweep still holds whole seeds. Within a wave it takes the run expected to take longest
    (longest processing time first, Graham 1969): the runs expected to be short go last, so
    the workers finish within about one short run of each other rather than one idling while
    the other trains a long last run. Runs of the same setting (ε, or method and strength)
    take roughly as long as each other (early stopping ends some settings sooner; the seed
    moves a run's length by up to ~25%), so a run's expected time is the mean measured time of
    the finished runs of its setting
    (:meth:`finished`), else its ``cost`` (known beforehand, e.g. from the output directory),
    else unknown; unknown runs go first within their wave (their time is learned early) and
    ties keep the given order.

    The order changes no run's numbers (each run seeds itself) and no output's order (results
    are assembled sorted by setting and seed).

    Example:
        >>> tasks = [RunTask(f"eps{e}_seed{s}", e, s) for s in (0, 1) for e in (0.0, 0.1, 0.5)]
        >>> order = DispatchOrder(tasks)
        >>> [order.pop().key for _ in range(3)]  # seed 0: nothing measured yet, the given order
        ['eps0.0_seed0', 'eps0.1_seed0', 'eps0.5_seed0']
        >>> for t, sec in zip(tasks[:3], (4.0, 6.0, 5.0)):
        ...     order.finished(t, sec)
        >>> [order.pop().key for _ in range(3)]  # seed 1: longest measured first
        ['eps0.1_seed1', 'eps0.5_seed1', 'eps0.0_seed1']
    """

    def __init__(self, tasks: Sequence[RunTask]) -> None:
        waves: dict[int, int] = {}
        for t in tasks:
            waves.setdefault(t.seed, len(waves))
        self._wave = waves
        self._queue = list(tasks)
        self._seconds: dict[Any, list[float]] = {}

    def __len__(self) -> int:
        return len(self._queue)

    def expected(self, task: RunTask) -> float | None:
        """The expected seconds of ``task``: its setting's measured mean, else its cost."""
        measured = self._seconds.get(task.setting)
        if measured:
            return sum(measured) / len(measured)
        return task.cost

    def pop(self) -> RunTask:
        """Remove and return the run to start next."""
        wave = min(self._wave[t.seed] for t in self._queue)

        def rank(i: int) -> tuple[float, int]:
            e = self.expected(self._queue[i])
            return (-math.inf if e is None else -e, i)  # unknown first, then longest

        i = min((i for i, t in enumerate(self._queue) if self._wave[t.seed] == wave), key=rank)
        return self._queue.pop(i)

    def finished(self, task: RunTask, seconds: float) -> None:
        """Record that ``task`` took ``seconds``."""
        self._seconds.setdefault(task.setting, []).append(float(seconds))


def run_seconds(record: Mapping[str, Any]) -> float | None:
    """The seconds a finished run took by its record: training plus evaluation (plus its
    distilled student's training), or None when the record does not say.

    Example:
        >>> run_seconds({"train_seconds": 4.0, "eval_seconds": 0.5}), run_seconds({})
        (4.5, None)
    """
    if not isinstance(record.get("train_seconds"), (int, float)):
        return None
    seconds = float(record["train_seconds"]) + float(record.get("eval_seconds") or 0.0)
    student = record.get("student")
    if isinstance(student, Mapping) and isinstance(student.get("train_seconds"), (int, float)):
        seconds += float(student["train_seconds"])
    return seconds


def with_costs(tasks: Sequence[RunTask], records: Iterable[Mapping[str, Any]]) -> list[RunTask]:
    """``tasks`` with their ``cost``: the mean :func:`run_seconds` of the finished ``records``
    of the same setting (other seeds found in the output directory), else left None.

    Settings are matched by run key without its seed (``eps0.1`` of ``eps0.1_seed2``).

    Example:
        >>> done = [{"key": "eps0.1_seed0", "train_seconds": 6.0, "eval_seconds": 0.0}]
        >>> [t.cost for t in with_costs([RunTask("eps0.1_seed1", 0.1, 1),
        ...                              RunTask("eps0_seed1", 0.0, 1)], done)]
        [6.0, None]
    """
    seconds: dict[str, list[float]] = {}
    for r in records:
        sec = run_seconds(r)
        if isinstance(r.get("key"), str) and sec is not None:
            seconds.setdefault(_setting_key(r["key"]), []).append(sec)
    out = []
    for t in tasks:
        known = seconds.get(_setting_key(t.key))
        out.append(dataclasses.replace(t, cost=sum(known) / len(known)) if known else t)
    return out


def _setting_key(key: str) -> str:
    return key.rsplit("_seed", 1)[0]


def _dispatch(
    tasks: Sequence[RunTask],
    limit: int,
    inflight: dict[Any, RunTask],
    submit: Callable[[RunTask], Any],
    wait_some: Callable[[list[Any]], Any],
    result: Callable[[Any], tuple[dict[str, Any], dict[str, np.ndarray], float]],
    on_start: OnStart,
    on_done: OnDone,
) -> None:
    """Keep ``limit`` runs in flight, in :class:`DispatchOrder`, until every task is done.

    ``submit(task)`` starts a run and returns its handle (kept in ``inflight``, which the
    caller cancels on an error); ``wait_some(handles)`` blocks until at least one has finished
    and returns the finished ones; ``result(handle)`` gives ``(record, arrays, seconds)`` or
    raises the run's error. Runs that finish together are reported in the given task order.
    """
    order = DispatchOrder(tasks)
    position = {t.key: i for i, t in enumerate(tasks)}

    def submit_next() -> None:
        if order:
            task = order.pop()
            inflight[submit(task)] = task
            on_start(task)

    for _ in range(limit):
        submit_next()
    while inflight:
        for handle in sorted(wait_some(list(inflight)), key=lambda h: position[inflight[h].key]):
            task = inflight.pop(handle)
            record, arrays, seconds = result(handle)
            order.finished(task, seconds)
            on_done(task, record, arrays)
            submit_next()


def _timed(job: RunJob, task: RunTask) -> tuple[dict[str, Any], dict[str, np.ndarray], float]:
    """Run ``task`` and return its record, arrays and wall seconds (for :class:`DispatchOrder`)."""
    t0 = time.perf_counter()
    record, arrays = job(task)
    return record, arrays, time.perf_counter() - t0


# --- worker side ------------------------------------------------------------------------------
_WORKER_JOB: RunJob | None = None


def _exit_with_parent(parent: int, every: float = 1.0) -> None:
    """End this worker when its parent is gone (killed with SIGKILL, say): no orphan keeps
    training, or waits for work, after the sweep that started it has died."""
    import threading
    import time

    def watch() -> None:
        while True:
            if os.getppid() != parent:
                os._exit(1)
            time.sleep(every)

    threading.Thread(target=watch, name="labelsmooth-parent-watch", daemon=True).start()


def _init_worker(payload: bytes, threads: int, parent: int) -> None:
    """Runs once in each worker: Ctrl-C is the parent's to handle; die with the parent; load
    the job; set threads."""
    global _WORKER_JOB
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _exit_with_parent(parent)
    torch.set_num_threads(threads)
    _WORKER_JOB = pickle.loads(payload)


def _run_in_worker(task: RunTask) -> tuple[dict[str, Any], dict[str, np.ndarray], float]:
    assert _WORKER_JOB is not None, "worker used without _init_worker"  # internal invariant
    return _timed(_WORKER_JOB, task)


def _unpicklable_reason(job: RunJob) -> str | None:
    """Why ``job`` cannot reach a spawned worker, or None when it can (as far as we can tell)."""
    try:
        pickle.dumps(job)
    except Exception as e:  # PicklingError, AttributeError ("local object"), TypeError, ...
        return f"{type(e).__name__}: {e}"
    main = sys.modules.get("__main__")
    if main is not None and not getattr(main, "__file__", None):
        # An interactive session: functions defined there pickle by name but a spawned worker
        # cannot import them.
        for fn in (job.train_fn, job.build, getattr(job.build, "fn", None)):
            if fn is not None and getattr(fn, "__module__", None) == "__main__":
                return f"{getattr(fn, '__qualname__', fn)!s} is defined in an interactive session"
    return None


def _stop_pool(pool: ProcessPoolExecutor) -> None:
    """Cancel what has not started and end the worker processes now (no orphans)."""
    terminate = getattr(pool, "terminate_workers", None)  # Python >= 3.14
    if terminate is not None:
        terminate()
        return
    procs = list((getattr(pool, "_processes", None) or {}).values())
    manager = getattr(pool, "_executor_manager_thread", None)  # shutdown() forgets it
    pool.shutdown(wait=False, cancel_futures=True)
    for p in procs:
        if p.is_alive():
            p.terminate()
    for p in procs:
        p.join(timeout=5)
        if p.is_alive():  # pragma: no cover - a worker that ignores SIGTERM
            p.kill()
            p.join(timeout=5)
    # The pool's manager thread reaps the same workers concurrently: a worker it reaped first
    # still reads as alive here (waitpid fails in this thread, so no exit code is recorded)
    # until that thread is done. The workers are gone, so this wait is short.
    if manager is not None:
        manager.join(timeout=10)


class ProcessExecutor(RunExecutor):
    """Runs in ``workers`` spawned processes (:class:`concurrent.futures.ProcessPoolExecutor`).

    Each worker receives the job once (pickled) and sets ``torch.set_num_threads(threads)``.
    Workers ignore SIGINT: a Ctrl-C reaches this process, which ends the workers, keeps the runs
    already reported and re-raises ``KeyboardInterrupt``. A worker whose parent dies without
    ending it (SIGKILL) exits within a second.
    """

    name = "processes"

    def __init__(self, workers: int, threads: int = 1) -> None:
        if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
            raise ValueError(f"workers must be a positive int, got {workers!r}")
        if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
            raise ValueError(f"threads must be a positive int, got {threads!r}")
        self.workers = workers
        self.threads = threads

    def run(
        self,
        job: RunJob,
        tasks: Sequence[RunTask],
        on_start: OnStart,
        on_done: OnDone,
        *,
        epoch_progress: Callable[[RunTask], Any] | None = None,
    ) -> None:
        if not tasks:
            return
        import multiprocessing

        payload = pickle.dumps(job)
        pool = ProcessPoolExecutor(
            max_workers=min(self.workers, len(tasks)),
            mp_context=multiprocessing.get_context("spawn"),
            initializer=_init_worker,
            initargs=(payload, self.threads, os.getpid()),
        )
        inflight: dict[Future[Any], RunTask] = {}

        def result(fut: Future[Any]) -> tuple[dict[str, Any], dict[str, np.ndarray], float]:
            try:
                return fut.result()
            except BrokenProcessPool as e:
                raise RuntimeError(
                    "a worker process died or could not start (out of memory, killed, or the "
                    "model function cannot be imported in a fresh process; a script that calls "
                    "sweep() at import time needs an `if __name__ == '__main__':` guard); re-run "
                    f"with workers=1 (--workers 1) to run in this process ({e})"
                ) from e

        try:
            _dispatch(
                tasks,
                self.workers,
                inflight,
                lambda task: pool.submit(_run_in_worker, task),
                lambda handles: wait(handles, return_when=FIRST_COMPLETED)[0],
                result,
                on_start,
                on_done,
            )
        except BaseException:
            _stop_pool(pool)
            raise
        pool.shutdown(wait=True)


# --- Ray ------------------------------------------------------------------------------------
RAY_MISSING = (
    "executor 'ray' (--executor ray) needs the ray package: pip install 'labelsmooth[ray]'"
)


def require_ray() -> None:
    """Raise ImportError with a one-line install hint when Ray is not installed."""
    import importlib.util

    if importlib.util.find_spec("ray") is None:
        raise ImportError(RAY_MISSING)


def _ray_run(
    job: RunJob, task: RunTask, threads: int
) -> tuple[dict[str, Any], dict[str, Any], float]:
    """The body of one Ray task: a run with ``threads`` torch threads, its result returned."""
    torch.set_num_threads(threads)
    return _timed(job, task)


class RayExecutor(RunExecutor):
    """Runs as Ray tasks (``num_cpus=1`` each, ``threads`` torch threads), results sent back.

    The job (model function, data arrays, settings) is put in Ray's object store once, from
    this process, and every task reads it from there: the nodes need labelsmooth (and the
    module of a custom model function) importable, but not the data files. Each finished run
    returns its record and arrays to this process, which saves it (``on_done``), so resume
    works as with the other executors.

    Args:
        address: a running Ray cluster (``"auto"``, ``"ray://host:10001"``, ``"host:6379"``);
            None starts a local instance with ``workers`` CPUs, shut down when the sweep ends.
            When Ray is already initialised in this process, that instance is used and left up.
        workers: runs in flight at once; None: the cluster's CPUs (local: one per core).
        threads: torch threads per run.
        init_kwargs: more keywords for ``ray.init`` (``object_store_memory``, ...).

    A ``KeyboardInterrupt`` (or a failed run) cancels the outstanding tasks
    (``ray.cancel(force=True)``); runs already reported are kept by the caller.
    """

    name = "ray"

    def __init__(
        self,
        address: str | None = None,
        workers: int | None = None,
        threads: int = 1,
        init_kwargs: dict[str, Any] | None = None,
    ) -> None:
        if address is not None and (not isinstance(address, str) or not address.strip()):
            raise ValueError(f"ray_address must be a non-empty string or None, got {address!r}")
        if workers is not None and (
            isinstance(workers, bool) or not isinstance(workers, int) or workers < 1
        ):
            raise ValueError(f"workers must be a positive int or None, got {workers!r}")
        if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
            raise ValueError(f"threads must be a positive int, got {threads!r}")
        require_ray()
        self.address = address
        self.workers = workers if workers is not None else 0  # 0: known once connected
        self._max_inflight = workers
        self.threads = threads
        self.init_kwargs = dict(init_kwargs or {})

    def _connect(self) -> bool:
        """Start or connect to Ray; True when this executor did (and so shuts it down)."""
        import ray

        if ray.is_initialized():
            return False
        kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": True}
        kwargs.update(self.init_kwargs)
        if self.address is not None:
            kwargs.pop("include_dashboard", None)  # a cluster's own setting
            ray.init(address=self.address, **kwargs)
        else:
            kwargs.setdefault("num_cpus", self._max_inflight or default_workers())
            # "local": always a new instance, never a cluster `ray start` left on this machine
            ray.init(address="local", **kwargs)
        return True

    def run(
        self,
        job: RunJob,
        tasks: Sequence[RunTask],
        on_start: OnStart,
        on_done: OnDone,
        *,
        epoch_progress: Callable[[RunTask], Any] | None = None,
    ) -> None:
        if not tasks:
            return
        import ray

        started = self._connect()
        try:
            limit = self._max_inflight
            if limit is None:
                limit = max(1, int(ray.cluster_resources().get("CPU", 1)))
            self.workers = limit
            remote = ray.remote(num_cpus=1, max_retries=0)(_ray_run)
            job_ref = ray.put(job)
            inflight: dict[Any, RunTask] = {}

            def wait_some(refs: list[Any]) -> set[Any]:
                done, _ = ray.wait(refs, num_returns=1)
                # also take whatever else has finished by now
                more, _ = ray.wait(refs, num_returns=len(refs), timeout=0)
                return set(done) | set(more)

            def result(ref: Any) -> tuple[dict[str, Any], dict[str, Any], float]:
                try:
                    return ray.get(ref)
                except ray.exceptions.RayTaskError as e:
                    # the run's own exception, raised here as itself when Ray can
                    cause = getattr(e, "cause", None)
                    if isinstance(cause, BaseException):
                        raise cause from e
                    raise

            try:
                _dispatch(
                    tasks,
                    limit,
                    inflight,
                    lambda task: remote.remote(job_ref, task, self.threads),
                    wait_some,
                    result,
                    on_start,
                    on_done,
                )
            except BaseException:
                for ref in inflight:
                    try:
                        ray.cancel(ref, force=True)
                    except Exception:  # pragma: no cover - already finished or node gone
                        pass
                raise
        finally:
            if started:
                ray.shutdown()


def default_workers(device: str = "cpu") -> int:
    """The default number of worker processes: one per usable core on CPU, 1 on an accelerator.

    Example:
        >>> default_workers("cuda") == 1 and default_workers("cpu") >= 1
        True
    """
    if torch.device(device).type != "cpu":
        return 1
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not on Linux
        return max(1, os.cpu_count() or 1)


def make_executor(
    workers: int | None,
    job: RunJob,
    n_tasks: int,
    *,
    threads: int | None = None,
    warn: Callable[[str], None] | None = None,
) -> RunExecutor:
    """The executor for ``workers`` (None = :func:`default_workers`), ``n_tasks`` runs.

    One worker, or at most one task, runs in this process. A job that cannot be sent to worker
    processes (a lambda or closure as the model function) also runs here, after ``warn`` says why.
    """
    if workers is None:
        workers = default_workers(getattr(job.settings, "device", "cpu"))
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ValueError(f"workers must be a positive int or None (one per core), got {workers!r}")
    if workers == 1 or n_tasks <= 1:
        return SerialExecutor()
    reason = _unpicklable_reason(job)
    if reason is not None:
        if warn is not None:
            warn(
                f"running the {n_tasks} runs one at a time in this process, not in {workers} "
                f"workers: the model function cannot be sent to a worker process ({reason}); "
                "define it at module level in an importable file to run in parallel"
            )
        return SerialExecutor()
    return ProcessExecutor(workers, threads=threads or 1)


def check_executor(executor: str, ray_address: str | None, device: str) -> None:
    """Check the executor arguments of a sweep before any data is loaded or model trained.

    Raises:
        ValueError: ``executor`` is not ``"local"`` or ``"ray"``, ``ray_address`` without Ray,
            or Ray on an accelerator.
        ImportError: ``executor="ray"`` without the ray package.
    """
    if executor not in ("local", "ray"):
        raise ValueError(f"executor must be 'local' or 'ray', got {executor!r}")
    if ray_address is not None and executor != "ray":
        raise ValueError(f"ray_address={ray_address!r} needs executor='ray', got {executor!r}")
    if executor == "ray":
        require_ray()
        if torch.device(device).type != "cpu":
            raise ValueError(
                f"executor='ray' trains on CPU (each run one Ray task with one CPU), got "
                f"device={device!r}; use executor='local' on an accelerator"
            )


def make_runner(
    executor: str,
    workers: int | None,
    job: RunJob,
    n_tasks: int,
    *,
    threads: int | None = None,
    ray_address: str | None = None,
    warn: Callable[[str], None] | None = None,
) -> RunExecutor:
    """The executor a sweep asked for: :class:`RayExecutor` for ``executor="ray"`` (at most
    ``workers`` runs in flight, None: the cluster's CPUs), else :func:`make_executor`."""
    if executor == "ray":
        return RayExecutor(ray_address, workers=workers, threads=threads or 1)
    return make_executor(workers, job, n_tasks, threads=threads, warn=warn)


def check_device(device: str) -> torch.device:
    """Parse ``device`` and check it exists here, before any data is loaded or model trained.

    Raises:
        ValueError: not a torch device, or its backend (CUDA, MPS) is not available, or the
            device index is beyond the devices present.

    Example:
        >>> check_device("cpu")
        device(type='cpu')
        >>> check_device("gpu0")
        Traceback (most recent call last):
        ...
        ValueError: device 'gpu0' is not a torch device (expected e.g. 'cpu', 'cuda', 'cuda:1')
    """
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(
            f"device {device!r} is not a torch device (expected e.g. 'cpu', 'cuda', 'cuda:1')"
        ) from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {device!r}: CUDA is not available on this machine")
        n = torch.cuda.device_count()
        if dev.index is not None and dev.index >= n:
            raise ValueError(f"device {device!r}: this machine has {n} CUDA device(s)")
    elif dev.type == "mps":
        mps = getattr(torch.backends, "mps", None)
        if mps is None or not mps.is_available():
            raise ValueError(f"device {device!r}: MPS is not available on this machine")
    elif dev.type != "cpu":
        backend = getattr(torch, dev.type, None)
        available = getattr(backend, "is_available", None)
        if available is None or not available():
            raise ValueError(f"device {device!r}: that backend is not available on this machine")
    return dev


class RunProgress:
    """One display for the whole sweep: runs done of total, running, waiting, and the ETA.

    With tqdm (the ``experiments`` extra) a single bar; its ETA is the remaining runs over the
    rate at which runs have finished so far, so it holds for any number of workers. Without
    tqdm, one line per finished run on stderr. ``enabled=False`` shows nothing.
    """

    def __init__(self, total: int, *, enabled: bool = True, reused: int = 0) -> None:
        import time

        self.total = total
        self.done = 0
        self.running: list[str] = []
        self.reused = reused
        self._time = time.perf_counter
        self._t0 = self._time()
        self._tqdm: Any = None
        self.bar: Any = None
        self.enabled = enabled and total > 0
        if self.enabled:
            try:
                from tqdm.auto import tqdm
            except ImportError:  # progress bars are an optional extra: plain lines instead
                tqdm = None
            self._tqdm = tqdm
            if tqdm is not None:
                desc = f"runs ({reused} reused)" if reused else "runs"
                self.bar = tqdm(total=total, desc=desc, unit="run", dynamic_ncols=True)

    def _postfix(self) -> dict[str, Any]:
        waiting = self.total - self.done - len(self.running)
        return {"running": len(self.running), "waiting": waiting}

    def started(self, task: RunTask) -> None:
        self.running.append(task.key)
        if self.bar is not None:
            self.bar.set_postfix(self._postfix())

    def finished(self, task: RunTask) -> None:
        if task.key in self.running:
            self.running.remove(task.key)
        self.done += 1
        if self.bar is not None:
            self.bar.set_postfix(self._postfix(), refresh=False)
            self.bar.update(1)
        elif self.enabled:
            elapsed = self._time() - self._t0
            eta = elapsed / self.done * (self.total - self.done)
            p = self._postfix()
            print(
                f"run {self.done}/{self.total} done ({task.key}); running {p['running']}, "
                f"waiting {p['waiting']}, ETA {_clock(eta)}",
                file=sys.stderr,
                flush=True,
            )

    def epoch_bar(self, task: RunTask, epochs: int) -> Any:
        """A per-epoch bar under the runs bar (serial runs only), or None."""
        if self.bar is None:
            return None
        return self._tqdm(total=epochs, desc=task.key, unit="ep", leave=False, dynamic_ncols=True)

    def write(self, message: str) -> None:
        """Print a line to stderr without breaking the bar."""
        if self.bar is not None:
            self._tqdm.write(message, file=sys.stderr)
        else:
            print(message, file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def _clock(seconds: float) -> str:
    """``1h02m``, ``3m05s`` or ``42s``.

    Example:
        >>> _clock(3725), _clock(185), _clock(41.6)
        ('1h02m', '3m05s', '42s')
    """
    s = int(round(seconds))
    if s >= 3600:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    if s >= 60:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s}s"
