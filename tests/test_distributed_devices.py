"""The device every collective receives (issue 17.3), checked on CPU.

No GPU here: the rule (:func:`labelsmooth._comm.collective_device`) is checked against mocked
backends, and the loss runs against a recording fake of ``torch.distributed`` with its logits on
the ``meta`` device, which stands for "a device that is not the CPU and not the current CUDA
device": every collective of the loss must receive tensors on the logits' device (or on the one
device the rule picks), and the target checksums, computed from a CPU target, must be on the
logits' device before they join the MAX all-reduce.
"""

from __future__ import annotations

from unittest import mock

import pytest
import torch
import torch.distributed as dist

import labelsmooth.distributed as D
from labelsmooth._comm import backend_device_types, collective_device
from labelsmooth.calibration import meters
from labelsmooth.functional import check_options


def _no_current_device():
    raise AssertionError("torch.cuda.current_device() must not be consulted for CUDA data")


@pytest.mark.parametrize("backend, data, op, expected", [
    ("gloo", "cpu", "all_reduce", "cpu"),
    ("gloo", None, "all_reduce", "cpu"),
    ("gloo", "cuda:1", "all_reduce", "cuda:1"),      # gloo reduces CUDA tensors ...
    ("gloo", "cuda:1", "all_gather", "cpu"),         # ... but gathers only CPU ones
    ("gloo", "cuda:1", None, "cpu"),                 # a buffer for any collective: CPU
    ("nccl", "cuda:3", "all_gather", "cuda:3"),
    ("nccl", "cuda:3", "all_reduce", "cuda:3"),      # the data's GPU, whatever the current one
    ("cpu:gloo,cuda:nccl", "cuda:1", "all_gather", "cuda:1"),
    ("cpu:gloo,cuda:nccl", "cpu", "all_gather", "cpu"),
    ("cpu:gloo,cuda:nccl", None, "all_reduce", "cpu"),
    ("my_backend", "meta", "all_gather", "meta"),    # an unknown backend: trust the data's device
])
def test_collective_device_is_keyed_on_the_data(backend, data, op, expected) -> None:
    with mock.patch("torch.distributed.get_backend", return_value=backend), \
         mock.patch("torch.cuda.current_device", _no_current_device):
        assert collective_device(None, data, op=op) == torch.device(expected)


def test_cpu_data_on_an_nccl_group_goes_to_the_groups_gpu() -> None:
    """NCCL cannot send CPU tensors: the group's bound device_id, else the current device."""
    bound = mock.Mock(bound_device_id=torch.device("cuda", 2))
    with mock.patch("torch.distributed.get_backend", return_value="nccl"), \
         mock.patch("torch.cuda.current_device", _no_current_device):
        assert collective_device(bound, torch.device("cpu")) == torch.device("cuda", 2)
        assert collective_device(bound) == torch.device("cuda", 2)
    unbound = mock.Mock(bound_device_id=None)
    with mock.patch("torch.distributed.get_backend", return_value="nccl"), \
         mock.patch("torch.cuda.current_device", return_value=5):
        assert collective_device(unbound, "cpu") == torch.device("cuda", 5)


def test_backend_device_types() -> None:
    with mock.patch("torch.distributed.get_backend", return_value="cpu:gloo,cuda:nccl"):
        assert backend_device_types(None) == ("cpu", "cuda")
    with mock.patch("torch.distributed.get_backend", return_value="nccl"):
        assert backend_device_types(None) == ("cuda",)
    with mock.patch("torch.distributed.get_backend", return_value="gloo"):
        assert backend_device_types(None, "all_reduce") == ("cpu", "cuda")
        assert backend_device_types(None, "all_gather") == ("cpu",)
        assert backend_device_types(None) == ("cpu",)


def test_meters_use_the_same_rule() -> None:
    """The calibration meters ask the one rule, with their state's device (was: current device)."""
    with mock.patch("torch.distributed.is_available", return_value=True), \
         mock.patch("torch.distributed.is_initialized", return_value=True), \
         mock.patch("torch.distributed.get_backend", return_value="nccl"), \
         mock.patch("torch.cuda.current_device", _no_current_device):
        assert meters._comm_device(None, torch.device("cuda", 1)) == torch.device("cuda", 1)
    with mock.patch("torch.distributed.is_available", return_value=True), \
         mock.patch("torch.distributed.is_initialized", return_value=True), \
         mock.patch("torch.distributed.get_backend", return_value="gloo"):
        # gloo: the meters' buffer goes through all_gather and all_reduce, so CUDA state -> CPU
        assert meters._comm_device(None, torch.device("cuda", 1)) == torch.device("cpu")
    assert not hasattr(D, "_collective_device")  # no second copy of the rule


class _FakeGroup:
    """A recording stand-in for torch.distributed with ``world`` identical ranks."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, backend: str, world: int = 2) -> None:
        self.calls: list[tuple[str, torch.device]] = []
        self.world = world
        for name, value in (("is_available", lambda: True), ("is_initialized", lambda: True),
                            ("get_world_size", lambda group=None: world),
                            ("get_rank", lambda group=None: 0),
                            ("get_backend", lambda group=None: backend)):
            monkeypatch.setattr(dist, name, value)
        monkeypatch.setattr(dist, "all_reduce", self.all_reduce)
        monkeypatch.setattr(dist, "all_gather", self.all_gather)

    def all_reduce(self, t, op=None, group=None):
        self.calls.append(("all_reduce", t.device))
        if op == dist.ReduceOp.SUM and t.device.type != "meta":
            t.mul_(self.world)  # identical ranks

    def all_gather(self, out, t, group=None):
        self.calls.append(("all_gather", t.device))
        for o in out:
            o.copy_(t)


def test_every_collective_gets_the_logits_device(monkeypatch: pytest.MonkeyPatch) -> None:
    """Logits on a non-CPU device (meta) with an unknown backend (trusted with any device):
    the fingerprint exchange and both all-reduces of the forward receive meta tensors."""
    fake = _FakeGroup(monkeypatch, "my_backend")
    x = torch.empty(4, 5, device="meta", requires_grad=True)
    y = torch.zeros(4, dtype=torch.long, device="meta")
    loss = D.vocab_parallel_cross_entropy(x, y, label_smoothing=0.1, validate=False,
                                          vocab_start=0, vocab_size=10)
    assert loss.device.type == "meta"
    assert [c for c, _ in fake.calls] == ["all_reduce", "all_reduce"]
    assert all(d.type == "meta" for _, d in fake.calls), fake.calls


def test_fingerprint_goes_where_the_rule_says(monkeypatch: pytest.MonkeyPatch) -> None:
    """The fingerprint exchange asks the rule with the logits' device (CPU here, gloo)."""
    fake = _FakeGroup(monkeypatch, "gloo")
    asked: list = []
    monkeypatch.setattr(D, "collective_device", lambda group, device=None, op=None:
                        asked.append((device, op)) or torch.device("cpu"))
    x = torch.randn(3, 4, dtype=torch.float64)
    loss = D.vocab_parallel_cross_entropy(x, torch.tensor([0, 5, 7]), label_smoothing=0.1)
    assert torch.isfinite(loss)
    assert asked == [(torch.device("cpu"), "all_gather")]
    assert fake.calls[0] == ("all_gather", torch.device("cpu"))


def test_checksums_of_a_cpu_target_join_the_logits_device() -> None:
    """validate=True with logits on another device than the target (issue 17.3: CUDA logits and a
    CPU target failed on a device mismatch): everything the MAX all-reduce carries is built on
    the logits' device. Meta stands for that device."""
    opts = check_options(label_smoothing=0.1, validate=True)
    call = D._Call("local_logits", "weight", rows=3, width=4, dtype=torch.float32, opts=opts,
                   check_values=True)
    # vocab_start/vocab_size given (no exchange): the checksums ride in the MAX all-reduce
    st = D._setup(torch.tensor([0, 5, 7]), 4, 0, 8, None, None, opts, torch.device("meta"),
                  torch.float32, True, None, 2, 0, call, False)
    assert st.agree is not None and st.agree.device.type == "meta"
    assert st.sh.y.device.type == "meta" and st.sh.in_shard.device.type == "meta"
    # ... and join it without a device mismatch
    m_r = torch.empty(3, device="meta")
    with mock.patch.object(D.dist, "all_reduce", lambda t, op=None, group=None: None):
        lse, *_ = D._combine(m_r, m_r, [m_r, m_r], [], None, 2, False, st.agree)
    assert lse.device.type == "meta"
    # with the exchange, they travel as host integers in the fingerprint: nothing in the MAX
    st = D._setup(torch.tensor([0, 5, 7]), 4, 0, 8, None, None, opts, torch.device("meta"),
                  torch.float32, True, None, 2, 0, call, True)
    assert st.agree is None


def test_first_call_does_not_import_dtensor() -> None:
    """Recognising DTensor input must not import torch.distributed.tensor (seconds of sympy
    imports on the first call of every program; 8 s measured here under load)."""
    import subprocess
    import sys
    code = ("import sys, torch; "
            "from labelsmooth.distributed import vocab_parallel_cross_entropy as f;"
            "f(torch.randn(2, 3), torch.tensor([0, 2]), label_smoothing=0.1);"
            "print('torch.distributed.tensor' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"


def test_online_label_smoothing_all_reduces_where_the_rule_says(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """OnlineLabelSmoothing.next_epoch asks the shared rule for its all-reduce device (before, it
    all-reduced its buffers on their own device: CPU buffers on an NCCL group would fail)."""
    from labelsmooth import online

    fake = _FakeGroup(monkeypatch, "gloo")
    asked: list = []
    monkeypatch.setattr(online, "collective_device", lambda group, device=None, op=None:
                        asked.append((device, op)) or torch.device("cpu"))
    loss = online.OnlineLabelSmoothing(3)
    loss(torch.tensor([[5.0, 0.0, 0.0], [0.0, 4.0, 0.0]]), torch.tensor([0, 1]))
    loss.next_epoch()
    assert asked == [(torch.device("cpu"), "all_reduce")]
    assert fake.calls == [("all_reduce", torch.device("cpu"))]
    # identical ranks: the all-reduced sums double, the per-class mean is unchanged
    assert torch.allclose(loss.soft_targets.sum(1), torch.ones(3, dtype=loss.soft_targets.dtype))
