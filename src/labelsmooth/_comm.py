"""Which device a collective runs on: one rule, keyed on the data's device.

Used by :mod:`labelsmooth.distributed` (the loss's exchanges) and
:mod:`labelsmooth.calibration.meters` (the meters' ``all_reduce``/``all_gather``), so that both
agree on the device of every tensor they hand to :mod:`torch.distributed`.

The rule: a collective runs on the device the data already lives on whenever the group's backend
runs that collective on that device type (NCCL: CUDA; gloo: CPU, and CUDA for ``all_reduce`` and
``broadcast`` only; a ``"cpu:gloo,cuda:nccl"`` group: both). Only when it does not — CPU data on
an NCCL group, CUDA data for a gloo ``all_gather``, or no data at all (a count, a flag) — does
the rule pick a device: CPU where the backend communicates on CPU, else the group's CUDA device
(the ``device_id`` the group was bound to at ``init_process_group``, else the current CUDA
device). It never picks ``torch.cuda.current_device()`` for data that already lives on a CUDA
device the backend can use: with one process driving several GPUs, or a current device set after
the tensors were made, that would move the data to another GPU or fail.
"""

from __future__ import annotations

from typing import Any

import torch

__all__ = ["backend_device_types", "collective_device"]


# gloo runs only these collectives on CUDA tensors (torch.distributed's backend table)
_GLOO_CUDA_OPS = ("all_reduce", "broadcast")


def _backends(group: Any) -> dict[str, str] | None:
    """{device type: backend name} of ``group``, or None for an unknown backend."""
    import torch.distributed as dist

    name = str(dist.get_backend(group)).lower()
    if ":" in name:  # "cpu:gloo,cuda:nccl": one backend per device type
        pairs = [part.split(":", 1) for part in name.split(",") if ":" in part]
        return {dev.strip(): be.strip() for dev, be in pairs}
    caps = getattr(dist.Backend, "backend_capability", {}) or {}
    if name in caps:
        return {dev: name for dev in caps[name]}
    if name == "nccl":  # pragma: no cover - torch without backend_capability
        return {"cuda": name}
    if name in ("gloo", "mpi", "ucc"):  # pragma: no cover
        return {"cpu": name, "cuda": name}
    return None


def backend_device_types(group: Any, op: str | None = None) -> tuple[str, ...] | None:
    """Device types on which the backend(s) of ``group`` run the collective ``op`` (None: every
    collective), or None if the backend is unknown.

    ``"cpu:gloo,cuda:nccl"`` gives ``("cpu", "cuda")``; a single backend name is looked up in
    ``torch.distributed.Backend.backend_capability`` (``nccl``: CUDA; ``gloo``: CPU, and CUDA for
    ``all_reduce``/``broadcast``).
    """
    backends = _backends(group)
    if backends is None:
        return None
    return tuple(dev for dev, be in backends.items()
                 if not (be == "gloo" and dev == "cuda" and op not in _GLOO_CUDA_OPS))


def _group_cuda_device(group: Any) -> torch.device:
    """The CUDA device of ``group``'s rank: its bound ``device_id``, else the current device."""
    import torch.distributed as dist

    pg = group
    if pg is None:
        try:
            pg = dist.distributed_c10d._get_default_group()
        except Exception:  # pragma: no cover - not initialised
            pg = None
    bound = getattr(pg, "bound_device_id", None) if pg is not None else None
    if isinstance(bound, torch.device) and bound.type == "cuda":
        return bound
    return torch.device("cuda", torch.cuda.current_device())


def collective_device(group: Any, device: torch.device | str | None = None,
                      op: str | None = None) -> torch.device:
    """The device on which to hand data living on ``device`` to the collective ``op`` of ``group``.

    ``device`` itself when the group's backend runs ``op`` on its type (an unknown backend is
    trusted to); otherwise CPU when the backend communicates on CPU, else the group's CUDA device.
    ``device=None`` (data not yet on any device, e.g. a count) follows the same preference.
    ``op=None`` asks for a device on which every collective runs (for a buffer that goes through
    several): gloo then keeps CUDA data on the CPU.

    Examples:
        >>> from unittest import mock
        >>> with mock.patch("torch.distributed.get_backend", return_value="gloo"):
        ...     collective_device(None, torch.device("cpu"))
        device(type='cpu')
        >>> with mock.patch("torch.distributed.get_backend", return_value="gloo"):
        ...     collective_device(None, "cuda:1", op="all_gather")  # gloo: no CUDA all_gather
        device(type='cpu')
        >>> with mock.patch("torch.distributed.get_backend", return_value="gloo"):
        ...     collective_device(None, "cuda:1", op="all_reduce")  # ... but a CUDA all_reduce
        device(type='cuda', index=1)
        >>> with mock.patch("torch.distributed.get_backend", return_value="nccl"):
        ...     collective_device(None, torch.device("cuda", 3))  # the data's GPU, not the current
        device(type='cuda', index=3)
    """
    dev = None if device is None else torch.device(device)
    types = backend_device_types(group, op)
    if dev is not None and (types is None or dev.type in types):
        return dev
    if types is None or "cpu" in types:
        return torch.device("cpu")
    if "cuda" in types:
        return _group_cuda_device(group)
    return torch.device(types[0])  # pragma: no cover - e.g. an XPU-only backend
