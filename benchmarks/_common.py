"""Shared benchmark helpers: timing, peak memory in a fresh process, environment, tables and CSV.

Used by ``bench_*.py`` scripts (not collected by pytest). Nothing here knows about losses.

Methodology, in one place:

* **Time** — :func:`time_cpu` / :func:`time_cuda`: ``warmup`` untimed calls, then ``repeat`` timed
  calls; report the median. An optional ``setup`` callable runs before every call, untimed (e.g. to
  refill logits that an in-place backward overwrote). CUDA uses events around each call.
* **Peak memory beyond a baseline, CPU** — :func:`peak_rss_beyond`: the resident-set high-water mark
  (``VmHWM`` in ``/proc/self/status``) is reset by writing ``5`` to ``/proc/self/clear_refs``; the
  resident set (``VmRSS``) just before the call is the baseline; the reported figure is
  ``VmHWM - baseline`` after one call. Run it in a fresh process (:func:`run_worker`) started with
  :data:`MEASURE_ENV` (``MALLOC_MMAP_THRESHOLD_=65536``) so that glibc maps every large tensor
  separately and returns it on free: the resident set then follows live tensors instead of keeping
  freed heap that a later allocation would reuse unseen. Timing processes keep the default
  allocator (what users run).
* **Peak memory, CUDA** — :func:`peak_cuda_beyond`: ``torch.cuda.max_memory_allocated`` after
  ``reset_peak_memory_stats``, minus ``memory_allocated`` before the call.
* **Environment** — :func:`environment` (torch version, threads, CPU model, load average, UTC date,
  git commit); :func:`write_csv` writes it as ``# key: value`` comment lines above the rows.
"""

from __future__ import annotations

import csv
import datetime as _dt
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import torch

#: Extra environment for a memory-measuring worker process (see the module docstring).
MEASURE_ENV = {"MALLOC_MMAP_THRESHOLD_": "65536"}

REPO = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------------------------------------
# Time


def time_cpu(
    fn: Callable[[], Any],
    *,
    warmup: int = 1,
    repeat: int = 5,
    setup: Callable[[], Any] | None = None,
) -> list[float]:
    """Wall-clock seconds of ``repeat`` calls of ``fn`` after ``warmup`` calls (setup untimed)."""
    out = []
    for i in range(warmup + repeat):
        if setup is not None:
            setup()
        t0 = time.perf_counter()
        fn()
        dt = time.perf_counter() - t0
        if i >= warmup:
            out.append(dt)
    return out


def time_cuda(
    fn: Callable[[], Any],
    *,
    warmup: int = 1,
    repeat: int = 5,
    setup: Callable[[], Any] | None = None,
) -> list[float]:
    """Seconds of ``repeat`` calls measured with CUDA events (setup untimed)."""
    out = []
    for i in range(warmup + repeat):
        if setup is not None:
            setup()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        torch.cuda.synchronize()
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        if i >= warmup:
            out.append(start.elapsed_time(end) / 1e3)
    return out


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values)) if values else float("nan")


# ------------------------------------------------------------------------------------------------
# Memory


def _status_bytes(key: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"{key} not found in /proc/self/status")


def rss_now() -> int:
    """Current resident set size in bytes (Linux)."""
    return _status_bytes("VmRSS")


def rss_peak() -> int:
    """Resident-set high-water mark in bytes since start or the last :func:`reset_rss_peak`."""
    return _status_bytes("VmHWM")


def reset_rss_peak() -> bool:
    """Reset ``VmHWM`` to the current resident set (Linux ≥ 4.0); False if not permitted."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def peak_rss_beyond(fn: Callable[[], Any], setup: Callable[[], Any] | None = None) -> int:
    """Bytes by which the resident set peaks above its level just before one call of ``fn``."""
    if setup is not None:
        setup()
    if not reset_rss_peak():
        raise RuntimeError("cannot reset VmHWM (/proc/self/clear_refs not writable)")
    base = rss_now()
    fn()
    return rss_peak() - base


def peak_cuda_beyond(fn: Callable[[], Any], setup: Callable[[], Any] | None = None) -> int:
    """Bytes by which CUDA allocated memory peaks above its level just before one call."""
    if setup is not None:
        setup()
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    fn()
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() - base


# ------------------------------------------------------------------------------------------------
# Fresh-process workers


def run_worker(
    script: str | Path, case: dict, *, extra_env: dict | None = None, timeout: float = 900.0
) -> dict:
    """Run ``python script --worker '<json case>'``; return the JSON dict it prints last.

    The worker must print one JSON object on its last stdout line. Errors come back as
    ``{"error": "..."}`` instead of raising, so one failing case does not end a table.
    """
    env = dict(os.environ)
    env.update(extra_env or {})
    cmd = [sys.executable, str(script), "--worker", json.dumps(case)]
    try:
        proc = subprocess.run(
            cmd, capture_output=True, text=True, env=env, timeout=timeout, check=False
        )
    except subprocess.TimeoutExpired:
        return {"error": f"timeout after {timeout:.0f} s"}
    lines = [ln for ln in proc.stdout.strip().splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        return {"error": " | ".join(tail)[-300:] or f"exit {proc.returncode}"}
    return json.loads(lines[-1])


# ------------------------------------------------------------------------------------------------
# Environment, tables, CSV


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _git_commit() -> str:
    """HEAD of the repository holding this file (``BENCH_GIT_COMMIT`` overrides, for snapshots)."""
    if os.environ.get("BENCH_GIT_COMMIT"):
        return os.environ["BENCH_GIT_COMMIT"]
    try:
        return (
            subprocess.run(
                ["git", "rev-parse", "--short", "HEAD"],
                cwd=REPO,
                check=False,
                capture_output=True,
                text=True,
                timeout=10,
            ).stdout.strip()
            or "unknown"
        )
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def load_average() -> str:
    try:
        return " ".join(f"{v:.2f}" for v in os.getloadavg())
    except OSError:
        return "n/a"


def environment(threads: int | None = None, device: str = "cpu") -> dict[str, str]:
    """What a reader needs to reproduce a table."""
    env = {
        "date_utc": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S"),
        "git_commit": _git_commit(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "cpu": _cpu_model(),
        "cpu_count": str(os.cpu_count()),
        "threads": str(threads if threads is not None else torch.get_num_threads()),
        "load_average_1_5_15": load_average(),
        "device": device,
        "command": " ".join([Path(sys.executable).name] + sys.argv),
    }
    if device == "cuda" and torch.cuda.is_available():
        env["gpu"] = torch.cuda.get_device_name()
        env["cuda"] = str(torch.version.cuda)
    return env


def format_table(rows: Iterable[dict], columns: Sequence[str]) -> str:
    """Fixed-width text table of ``rows`` (dicts) restricted to ``columns``."""
    rows = list(rows)

    def cell(v: Any) -> str:
        if isinstance(v, float):
            return f"{v:.3g}" if abs(v) < 1000 else f"{v:.0f}"
        return "" if v is None else str(v)

    cells = [[cell(r.get(c)) for c in columns] for r in rows]
    widths = [max([len(c)] + [len(row[i]) for row in cells]) for i, c in enumerate(columns)]
    out = ["  ".join(c.rjust(w) for c, w in zip(columns, widths))]
    out.append("  ".join("-" * w for w in widths))
    out += ["  ".join(v.rjust(w) for v, w in zip(row, widths)) for row in cells]
    return "\n".join(out)


def write_csv(path: str | Path, rows: Sequence[dict], env: dict[str, str]) -> Path:
    """Write ``rows`` with the environment as leading ``# key: value`` comment lines."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    keys: list[str] = []
    for r in rows:
        keys += [k for k in r if k not in keys]
    with open(path, "w", newline="") as f:
        f.writelines(f"# {k}: {v}\n" for k, v in env.items())
        w = csv.DictWriter(f, fieldnames=keys)
        w.writeheader()
        w.writerows(rows)
    return path
