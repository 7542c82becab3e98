"""Train a small model whose output layer is sharded over the vocabulary, on 2 CPU processes.

    torchrun --nproc-per-node 2 examples/vocab_parallel_train.py

Every rank holds the (replicated) trunk and its own rows of the output layer (uneven shards when
the vocabulary does not divide evenly). The label-smoothed loss is computed with
``labelsmooth.distributed.vocab_parallel_linear_cross_entropy`` (or, with ``--variant logits``, from
the local logits with ``vocab_parallel_cross_entropy``): the loss is the same on every rank and the
gradients are those of the unsharded model. To show it, rank 0 also trains a full, unsharded copy
of the model with ``labelsmooth.cross_entropy`` in lockstep and prints both losses; at the end the
shards are gathered and compared with the unsharded weights.

Runs without torchrun too (one process, one shard).
"""

from __future__ import annotations

import argparse
import copy
import os

import torch
import torch.distributed as dist
from torch import nn

import labelsmooth as ls
from labelsmooth.distributed import (
    copy_to_vocab_parallel,
    vocab_parallel_cross_entropy,
    vocab_parallel_linear_cross_entropy,
    vocab_shard_range,
)


def make_data(n: int, features: int, vocab: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Features and labels of a fixed random teacher (a learnable many-class problem)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, features, generator=g)
    teacher = torch.randn(features, vocab, generator=g)
    y = (x @ teacher + 0.5 * torch.randn(n, vocab, generator=g)).argmax(1)
    return x, y


class Trunk(nn.Module):
    def __init__(self, features: int, hidden: int) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(features, hidden), nn.GELU(), nn.Linear(hidden, hidden))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--vocab", type=int, default=1001)
    p.add_argument("--features", type=int, default=32)
    p.add_argument("--hidden", type=int, default=64)
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--label-smoothing", type=float, default=0.1)
    p.add_argument("--spread", choices=("all", "others"), default="all")
    p.add_argument("--z-loss", type=float, default=1e-4)
    p.add_argument("--variant", choices=("linear", "logits"), default="linear")
    p.add_argument("--log-every", type=int, default=10)
    args = p.parse_args()

    distributed = "RANK" in os.environ
    if distributed:
        dist.init_process_group("gloo")
    rank = dist.get_rank() if distributed else 0
    world = dist.get_world_size() if distributed else 1
    torch.set_num_threads(1)
    torch.manual_seed(0)  # the same initial full model on every rank

    trunk = Trunk(args.features, args.hidden)
    head = nn.Linear(args.hidden, args.vocab)
    reference = (copy.deepcopy(trunk), copy.deepcopy(head)) if rank == 0 else None

    # This rank's rows of the output layer: contiguous, uneven when vocab % world != 0.
    width = args.vocab // world + (rank < args.vocab % world)
    start, vocab = vocab_shard_range(width)  # one tiny all_gather, once
    shard_w = nn.Parameter(head.weight.detach()[start:start + width].clone())
    shard_b = nn.Parameter(head.bias.detach()[start:start + width].clone())
    params = list(trunk.parameters()) + [shard_w, shard_b]
    opt = torch.optim.Adam(params, lr=args.lr)
    loss_kw = dict(label_smoothing=args.label_smoothing, spread=args.spread, z_loss=args.z_loss)
    # With vocab_start/vocab_size given, a step makes only the loss's two all-reduces. On the first
    # step, validate=True adds one all_gather of the call's fingerprint: if any rank's batch,
    # options or targets differ (or one rank rejects its arguments), every rank raises the same
    # ValueError naming the rank, rather than hanging.
    if reference is not None:
        ref_opt = torch.optim.Adam([*reference[0].parameters(), *reference[1].parameters()],
                                   lr=args.lr)

    x_all, y_all = make_data(args.batch * 8, args.features, args.vocab, seed=1)
    if rank == 0:
        print(f"world={world} vocab={vocab} shards="
              f"{[args.vocab // world + (r < args.vocab % world) for r in range(world)]} "
              f"variant={args.variant} {loss_kw}")
    for step in range(args.steps):
        i = (step * args.batch) % len(x_all)
        x, y = x_all[i:i + args.batch], y_all[i:i + args.batch]
        h = trunk(x)
        check = True if step == 0 else None  # None: the default (value checks on CPU only)
        if args.variant == "linear":
            loss = vocab_parallel_linear_cross_entropy(h, shard_w, y, shard_b, vocab_start=start,
                                                       vocab_size=vocab, validate=check, **loss_kw)
        else:
            logits = copy_to_vocab_parallel(h) @ shard_w.T + shard_b  # all-reduces d(h) in backward
            loss = vocab_parallel_cross_entropy(logits, y, vocab_start=start, vocab_size=vocab,
                                                validate=check, **loss_kw)
        opt.zero_grad()
        loss.backward()
        opt.step()

        if reference is not None:  # the unsharded model, one process, same data
            ref_loss = ls.cross_entropy(reference[1](reference[0](x)), y, **loss_kw)
            ref_opt.zero_grad()
            ref_loss.backward()
            ref_opt.step()
            if step % args.log_every == 0 or step == args.steps - 1:
                print(f"step {step:3d}  sharded loss {loss.item():.6f}  "
                      f"single-process loss {ref_loss.item():.6f}  "
                      f"|diff| {abs(loss.item() - ref_loss.item()):.1e}")

    # Gather the shards and compare with the unsharded model trained in one process.
    shards = [None] * world
    if distributed:
        dist.all_gather_object(shards, (shard_w.detach(), shard_b.detach()))
    else:
        shards = [(shard_w.detach(), shard_b.detach())]
    if reference is not None:
        w_full = torch.cat([s[0] for s in shards])
        b_full = torch.cat([s[1] for s in shards])
        d_head = max(float((w_full - reference[1].weight.detach()).abs().max()),
                     float((b_full - reference[1].bias.detach()).abs().max()))
        d_trunk = max(float((a.detach() - b.detach()).abs().max())
                      for a, b in zip(trunk.parameters(), reference[0].parameters()))
        with torch.no_grad():
            acc = (reference[1](reference[0](x_all)).argmax(1) == y_all).float().mean()
        print(f"after {args.steps} steps: max |param diff| head {d_head:.1e}, trunk {d_trunk:.1e}; "
              f"train accuracy {acc:.3f}")
    if distributed:
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
