"""The sweep's output directory: one sweep at a time, atomic writes, reading finished runs back.

* :class:`DirectoryLock` takes an exclusive ``flock`` on ``out/.lock`` for the whole sweep, so
  two sweeps never write runs into one directory. The kernel drops the lock when its process
  ends, however it ends, so a crashed sweep never leaves a stale lock behind. The file holds the
  owner's pid, host and command, for the refusal message. (POSIX only; on Windows no lock is
  taken. On network file systems ``flock`` is only as good as the server's lock support.)
* :func:`atomic_write` writes a temporary file in the target's directory, then renames it over
  the target: a reader sees the old file or the new one, never half of one.
* :func:`read_run` reads one finished run and raises :class:`DamagedRunError` (naming the file)
  when it cannot be used, so the sweep can train that run again.
"""

from __future__ import annotations

import datetime
import errno
import io
import json
import os
import socket
import sys
import tempfile
from collections.abc import Callable
from typing import Any

import numpy as np

__all__ = [
    "DamagedRunError",
    "DirectoryLock",
    "OutputDirError",
    "SweepLockedError",
    "atomic_write",
    "check_record",
    "prepare_out_dir",
    "read_arrays",
    "read_record",
    "read_run",
    "write_json",
    "write_npz",
]


class SweepLockedError(RuntimeError):
    """Another sweep holds the output directory's lock."""


class OutputDirError(PermissionError):
    """The output directory cannot be created or written (read-only, not a directory...)."""


class DamagedRunError(ValueError):
    """A saved run cannot be read back; ``path`` names the file and ``reason`` says why."""

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = path
        self.reason = reason


def atomic_write(path: str, data: bytes) -> None:
    """Write to a temporary file in the same directory, then rename over ``path``.

    Example:
        >>> import tempfile, os
        >>> d = tempfile.mkdtemp()
        >>> atomic_write(os.path.join(d, "a.txt"), b"hi")
        >>> open(os.path.join(d, "a.txt")).read(), sorted(os.listdir(d))
        ('hi', ['a.txt'])
    """
    d = os.path.dirname(path) or "."
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=d)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; results are ordinary files
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def write_json(path: str, obj: Any) -> None:
    """Write ``obj`` as indented JSON to ``path`` atomically (temporary file, then rename)."""
    atomic_write(path, (json.dumps(obj, indent=2, sort_keys=False) + "\n").encode())


def write_npz(path: str, arrays: dict[str, np.ndarray]) -> None:
    """Write ``arrays`` as a compressed ``.npz`` to ``path`` atomically."""
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    atomic_write(path, buf.getvalue())


def prepare_out_dir(out: str) -> str:
    """Create ``out/runs`` and check ``out`` is writable; return the runs directory.

    Raises:
        OutputDirError: with a one-line message naming the directory and the reason.
    """
    runs = os.path.join(out, "runs")
    try:
        os.makedirs(runs, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".tmp-", dir=runs)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise OutputDirError(
            f"cannot write to the output directory {out!r} "
            f"({e.strerror or type(e).__name__}{': ' + e.filename if e.filename else ''}); "
            "choose another output directory (--out)"
        ) from None
    return runs


class DirectoryLock:
    """An exclusive, non-blocking ``flock`` on ``directory/.lock``, held while in the ``with``.

    Example:
        >>> import tempfile
        >>> d = tempfile.mkdtemp()
        >>> with DirectoryLock(d):
        ...     try:
        ...         DirectoryLock(d).acquire()
        ...     except SweepLockedError as e:
        ...         print("refused:", "another sweep" in str(e))
        refused: True
    """

    def __init__(self, directory: str, describe: str = "sweep") -> None:
        self.directory = directory
        self.path = os.path.join(directory, ".lock")
        self.describe = describe
        self._fd: int | None = None

    def acquire(self) -> None:
        try:
            import fcntl
        except ImportError:  # pragma: no cover - Windows: no lock
            return
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
        except OSError as e:
            raise OutputDirError(
                f"cannot create the lock file {self.path!r} ({e.strerror}); "
                "choose another output directory (--out)"
            ) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                os.close(fd)
                raise
            holder = _read_holder(fd)
            os.close(fd)
            raise SweepLockedError(
                f"{self.directory} is in use by another {self.describe}"
                f"{' (' + holder + ')' if holder else ''}; wait for it to finish or choose "
                "another output directory (--out)"
            ) from None
        info = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "started": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC"),
            "command": " ".join(sys.argv),
        }
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(info) + "\n").encode(), 0)
        self._fd = fd

    def release(self) -> None:
        if self._fd is None:
            return
        import fcntl

        fd, self._fd = self._fd, None
        try:
            os.ftruncate(fd, 0)  # no stale owner shown to the next sweep
        except OSError:  # pragma: no cover
            pass
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)

    def __enter__(self) -> DirectoryLock:
        self.acquire()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.release()


def _read_holder(fd: int) -> str:
    try:
        info = json.loads(os.pread(fd, 4096, 0).decode() or "{}")
    except (OSError, ValueError):
        return ""
    if not isinstance(info, dict) or "pid" not in info:
        return ""
    parts = [f"pid {info['pid']}"]
    if info.get("host") and info["host"] != socket.gethostname():
        parts[0] += f" on {info['host']}"
    if info.get("started"):
        parts.append(f"started {info['started']}")
    if info.get("command"):
        parts.append(f"command: {info['command']}")
    return ", ".join(parts)


def read_record(json_path: str) -> dict[str, Any]:
    """Read a run's record (``.json``); raise :class:`DamagedRunError` unless it is a JSON object
    with ``smoothing`` and ``seed``."""
    try:
        with open(json_path, "rb") as fh:
            rec = json.loads(fh.read().decode("utf-8"))
    except (ValueError, UnicodeDecodeError) as e:  # JSONDecodeError is a ValueError
        raise DamagedRunError(json_path, f"not valid JSON ({e})") from None
    except OSError as e:
        raise DamagedRunError(json_path, f"cannot be read ({e.strerror})") from None
    if not isinstance(rec, dict) or "smoothing" not in rec or "seed" not in rec:
        got = type(rec).__name__ if not isinstance(rec, dict) else f"keys {sorted(rec)[:8]}"
        raise DamagedRunError(json_path, f"not a run record (got {got})")
    return rec


def read_arrays(npz_path: str) -> dict[str, np.ndarray]:
    """Read a run's arrays (``.npz``), every member; raise :class:`DamagedRunError` if missing,
    truncated or corrupt."""
    if not os.path.exists(npz_path):
        raise DamagedRunError(npz_path, "missing (the run's arrays)")
    try:
        with np.load(npz_path, allow_pickle=False) as f:
            return {k: f[k] for k in f.files}  # reads every member: a bad CRC raises here
    except Exception as e:  # BadZipFile, EOFError, OSError, ValueError (pickled object)...
        raise DamagedRunError(npz_path, f"not a readable .npz ({type(e).__name__}: {e})") from None


def check_record(json_path: str, rec: dict[str, Any], check: Callable[[dict[str, Any]], Any]) -> None:
    """Run ``check(rec)`` (e.g. the sweep's flattening of a run); any exception it raises
    becomes a :class:`DamagedRunError` naming ``json_path``."""
    try:
        check(rec)
    except Exception as e:
        raise DamagedRunError(
            json_path, f"an incomplete run record ({type(e).__name__}: {e})"
        ) from None


def read_run(
    json_path: str, check: Callable[[dict[str, Any]], Any] | None = None
) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Read one finished run: its record (``.json``) and arrays (the ``.npz`` beside it).

    ``check(record)`` may raise (any exception) to say the record is unusable, e.g. the sweep's
    own flattening of a run.

    Raises:
        DamagedRunError: unreadable or invalid JSON, a record that is not a run, a missing,
            truncated or corrupt ``.npz``.
    """
    rec = read_record(json_path)
    if check is not None:
        check_record(json_path, rec, check)
    stem = json_path[:-5] if json_path.endswith(".json") else json_path
    return rec, read_arrays(stem + ".npz")
