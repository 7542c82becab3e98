"""Run the docs/lightning.md module in a Lightning fit and write the logged calibration values.

Usage: python tests/_lightning_ddp_calibration.py OUT.json DEVICES

Run by tests/test_integration_torchmetrics.py (as a subprocess, under a timeout): with DEVICES=2,
Lightning's DDP launcher starts a second process running this same script (gloo on CPU). Rank 0
writes the logged values, and the one-process reference values of labelsmooth.calibration's
functions on the whole validation set with the final weights (identical on every rank).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def recipe_namespace() -> dict:
    """Execute the python code blocks of docs/lightning.md up to the module definition."""
    text = (Path(__file__).resolve().parents[1] / "docs" / "lightning.md").read_text()
    blocks = text.split("```python\n")[1:]
    namespace: dict = {"__name__": "lightning_recipe"}
    exec(compile(blocks[0].split("```")[0], "docs/lightning.md", "exec"), namespace)
    return namespace


def main(out: str, devices: int) -> None:
    import lightning as L
    import torch
    from torch.utils.data import DataLoader, TensorDataset

    from labelsmooth import calibration as cal

    torch.set_num_threads(1)
    ns = recipe_namespace()
    L.seed_everything(0, verbose=False)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(320, 8, generator=g)
    y = (x[:, :4].argmax(dim=1) + (torch.rand(320, generator=g) < 0.2).long()) % 4
    # 128 validation rows: a multiple of 2 ranks x batch 16, so DistributedSampler pads nothing.
    train = DataLoader(TensorDataset(x[:192], y[:192]), batch_size=32)
    val = DataLoader(TensorDataset(x[192:], y[192:]), batch_size=16)
    module = ns["CalibratedClassifier"](torch.nn.Linear(8, 4), label_smoothing=0.1, n_bins=10)
    trainer = L.Trainer(
        max_epochs=1,
        accelerator="cpu",
        devices=devices,
        strategy="ddp" if devices > 1 else "auto",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(module, train, val)
    logged = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/")}
    if not trainer.is_global_zero:
        return
    with torch.no_grad():
        logits = module.model(x[192:])  # float32, as the metrics saw them
    yv = y[192:]
    kw = {"from_logits": True}
    reference = {
        "val/ece": cal.expected_calibration_error(logits, yv, 10, **kw),
        "val/adaptive_ece": cal.adaptive_calibration_error(logits, yv, 10, **kw),
        "val/debiased_ce": cal.debiased_calibration_error(logits, yv, 10, **kw),
        "val/gap": cal.calibration_gap(logits, yv, 10, **kw).overall,
        "val/nll": cal.negative_log_likelihood(logits, yv, **kw),
        "val/brier": cal.brier_score(logits, yv, **kw),
    }
    # What each rank would log on its own shard (DistributedSampler: rank r gets rows r::2).
    per_rank = [
        float(cal.expected_calibration_error(logits[r::devices], yv[r::devices], 10, **kw))
        for r in range(devices)
    ]
    Path(out).write_text(
        json.dumps(
            {
                "world_size": trainer.world_size,
                "logged": logged,
                "reference": {k: float(v) for k, v in reference.items()},
                "per_rank_ece": per_rank,
            }
        )
    )


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]))
