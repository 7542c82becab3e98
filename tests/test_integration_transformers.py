"""labelsmooth.integrations.transformers against Hugging Face's own label smoothing, in Trainer.

Tiny randomly initialised GPT-2 and Llama models built from configs in code (no download), trained
for a few SGD steps on CPU. SGD keeps float-level differences float-level (Adam would amplify them),
so equal final weights mean equal losses and gradients at every step.
"""

from __future__ import annotations

import pickle

import pytest
import torch
import torch.nn.functional as F

transformers = pytest.importorskip("transformers")
pytest.importorskip("accelerate")

import labelsmooth as ls  # noqa: E402
from labelsmooth.integrations.transformers import (  # noqa: E402
    loss_func,
    shift_labels_for_causal_lm,
    use_fused_loss,
)

VOCAB, SEQ = 37, 9


def gpt2(seed: int = 0):
    torch.manual_seed(seed)
    cfg = transformers.GPT2Config(vocab_size=VOCAB, n_positions=16, n_embd=16, n_layer=1,
                                  n_head=2, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    return transformers.GPT2LMHeadModel(cfg)


def llama(seed: int = 0):
    torch.manual_seed(seed)
    cfg = transformers.LlamaConfig(vocab_size=VOCAB, hidden_size=16, intermediate_size=32,
                                   num_hidden_layers=1, num_attention_heads=2,
                                   num_key_value_heads=1, max_position_embeddings=16,
                                   tie_word_embeddings=False)
    return transformers.LlamaForCausalLM(cfg)


def dataset(n: int = 8, seed: int = 1) -> list[dict[str, torch.Tensor]]:
    """Sequences with right padding of different lengths: labels -100 on the padding."""
    g = torch.Generator().manual_seed(seed)
    rows = []
    for i in range(n):
        ids = torch.randint(0, VOCAB, (SEQ,), generator=g)
        length = SEQ - (i % 4)  # 9, 8, 7, 6 real tokens
        mask = (torch.arange(SEQ) < length).long()
        labels = torch.where(mask.bool(), ids, torch.full_like(ids, -100))
        rows.append({"input_ids": ids, "attention_mask": mask, "labels": labels})
    return rows


def train(model, tmp_path, *, steps: int = 3, batch: int = 4, accum: int = 1,
          smoothing_factor: float = 0.0, compute_loss_func=None):
    args = transformers.TrainingArguments(
        output_dir=str(tmp_path), max_steps=steps, per_device_train_batch_size=batch,
        gradient_accumulation_steps=accum, learning_rate=0.5, optim="sgd",
        lr_scheduler_type="constant", label_smoothing_factor=smoothing_factor,
        report_to="none", save_strategy="no", logging_steps=1, use_cpu=True, seed=0,
        dataloader_num_workers=0, disable_tqdm=True,
    )
    trainer = transformers.Trainer(model=model, args=args, train_dataset=dataset(),
                                   compute_loss_func=compute_loss_func)
    trainer.train()
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    return {k: v.detach().clone() for k, v in model.state_dict().items()}, losses


def max_diff(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k] - b[k]).abs().max()) for k in a)


def moved(a: dict, b: dict) -> float:
    return max(float((a[k] - b[k]).abs().max()) for k in a)


@pytest.mark.parametrize("accum", [1, 2])
def test_loss_func_equals_hf_label_smoothing_in_trainer(tmp_path, accum):
    eps = 0.2
    start = gpt2().state_dict()
    hf, hf_losses = train(gpt2(), tmp_path / "hf", batch=4 // accum, accum=accum,
                          smoothing_factor=eps)
    ours, our_losses = train(gpt2(), tmp_path / "ls", batch=4 // accum, accum=accum,
                             compute_loss_func=loss_func(label_smoothing=eps))
    assert moved(hf, start) > 1e-2  # the comparison below is about trained weights
    assert max_diff(hf, ours) < 1e-5
    assert our_losses == pytest.approx(hf_losses, rel=1e-5)


def test_gradient_accumulation_equals_the_whole_batch(tmp_path):
    # 2 micro-batches of 2 sequences with different token counts = 1 batch of 4 sequences.
    whole, _ = train(gpt2(), tmp_path / "a", batch=4, accum=1, compute_loss_func=loss_func(0.1))
    accum, _ = train(gpt2(), tmp_path / "b", batch=2, accum=2, compute_loss_func=loss_func(0.1))
    assert max_diff(whole, accum) < 1e-5


def test_the_unshifted_glue_is_what_the_shift_prevents(tmp_path):
    # The check above can fail: forgetting the causal shift trains a different model.
    hf, _ = train(gpt2(), tmp_path / "hf", smoothing_factor=0.1)
    wrong, _ = train(gpt2(), tmp_path / "w", compute_loss_func=loss_func(0.1, shift_labels=False))
    assert max_diff(hf, wrong) > 1e-3


def test_loss_func_matches_torch_and_hf_label_smoother_directly():
    from transformers.trainer_pt_utils import LabelSmoother

    torch.manual_seed(0)
    logits = torch.randn(3, 5, 11, dtype=torch.float64, requires_grad=True)
    labels = torch.randint(0, 11, (3, 5))
    labels[0, 3:] = -100
    labels[2, 0] = -100
    for shift in (True, False):
        ours = loss_func(0.15, shift_labels=shift)({"logits": logits}, labels)
        theirs = LabelSmoother(epsilon=0.15)({"logits": logits}, labels, shift_labels=shift)
        torch.testing.assert_close(ours, theirs)
        (g1,) = torch.autograd.grad(ours, logits)
        (g2,) = torch.autograd.grad(theirs, logits)
        torch.testing.assert_close(g1, g2)
    # num_items_in_batch: the summed loss over it, as an int or a tensor.
    s = F.cross_entropy(logits[:, :-1].reshape(-1, 11), labels[:, 1:].reshape(-1),
                        label_smoothing=0.15, reduction="sum")
    for n in (17, torch.tensor(17)):
        torch.testing.assert_close(loss_func(0.15)((logits,), labels, n), s / 17)


def test_options_pass_through_and_are_checked():
    torch.manual_seed(0)
    logits = torch.randn(2, 6, 7, dtype=torch.float64)
    labels = torch.randint(0, 7, (2, 6))
    prior = torch.softmax(torch.randn(7, dtype=torch.float64), 0)
    opts = dict(spread="all", prior=prior, z_loss=1e-3, weight=torch.rand(7, dtype=torch.float64),
                weight_mode="target")
    got = loss_func(0.3, shift_labels=False, **opts)(logits, labels, num_items_in_batch=12)
    want = ls.cross_entropy(logits.reshape(-1, 7), labels.reshape(-1), label_smoothing=0.3,
                            reduction="sum", **opts) / 12
    torch.testing.assert_close(got, want)
    others = loss_func(0.3, spread="others")(logits, labels)
    want = ls.cross_entropy(logits[:, :-1].reshape(-1, 7), labels[:, 1:].reshape(-1),
                            label_smoothing=0.3, spread="others")
    torch.testing.assert_close(others, want)
    with pytest.raises(TypeError, match="spred"):
        loss_func(0.1, spred="others")
    with pytest.raises(TypeError, match="reduction"):
        loss_func(0.1, reduction="sum")
    with pytest.raises(ValueError, match="label_smoothing"):
        loss_func(1.5)
    with pytest.raises(TypeError, match="shift_labels"):
        loss_func(0.1, shift_labels="yes")
    with pytest.raises(ValueError, match="labels"):
        loss_func(0.1)(logits, labels[:, :3])
    with pytest.raises(TypeError, match="outputs"):
        loss_func(0.1)(object(), labels)
    fn = pickle.loads(pickle.dumps(loss_func(0.1, spread="others")))  # dataloader workers, spawn
    assert fn.options == {"spread": "others"}


def test_all_ignored_batch_is_zero_not_nan():
    logits = torch.randn(1, 4, 5, requires_grad=True)
    labels = torch.full((1, 4), -100)
    loss = loss_func(0.1)(logits, labels)
    assert loss.item() == 0.0
    loss.backward()
    assert torch.equal(logits.grad, torch.zeros_like(logits))


def test_shift_labels_for_causal_lm():
    labels = torch.tensor([[1, 2, 3, -100]])
    assert shift_labels_for_causal_lm(labels).tolist() == [[2, 3, -100, -100]]
    assert shift_labels_for_causal_lm(labels, ignore_index=-1).tolist() == [[2, 3, -100, -1]]
    # Sequence classification (one label per example) must not be shifted: a clear error.
    with pytest.raises(ValueError, match="shift_labels=False"):
        loss_func(0.1)(torch.randn(4, 3), torch.tensor([0, 1, 2, 0]))
    got = loss_func(0.1, shift_labels=False)(torch.randn(4, 3, dtype=torch.float64),
                                              torch.tensor([0, 1, 2, -100]))
    assert got.ndim == 0 and torch.isfinite(got)


def test_fused_head_evaluates_like_hf_label_smoothing(tmp_path):
    losses = []
    for fused in (True, False):
        model = use_fused_loss(gpt2(), 0.1) if fused else gpt2()
        args = transformers.TrainingArguments(
            output_dir=str(tmp_path), per_device_eval_batch_size=4, report_to="none",
            use_cpu=True, label_smoothing_factor=0.0 if fused else 0.1, disable_tqdm=True)
        trainer = transformers.Trainer(model=model, args=args, eval_dataset=dataset())
        losses.append(trainer.evaluate()["eval_loss"])
    assert losses[0] == pytest.approx(losses[1], rel=1e-6)


@pytest.mark.parametrize("build", [gpt2, llama], ids=["gpt2", "llama"])
def test_fused_head_equals_unfused_forward(build):
    batch = torch.utils.data.default_collate(dataset(4))
    opts = dict(spread="others", z_loss=1e-3)
    plain = build()
    logits = plain(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    want = loss_func(0.1, **opts)(logits, batch["labels"], num_items_in_batch=25)
    want.backward()
    fused = use_fused_loss(build(), 0.1, **opts)
    out = fused(**batch, num_items_in_batch=25)
    assert out.logits is None  # never built
    torch.testing.assert_close(out.loss, want, rtol=1e-5, atol=1e-6)
    out.loss.backward()
    for (name, p), q in zip(plain.named_parameters(), fused.parameters()):
        torch.testing.assert_close(q.grad, p.grad, rtol=1e-4, atol=1e-6, msg=name)
    # Without labels the model is the model: logits as before.
    again = fused(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    torch.testing.assert_close(again.logits, logits)


@pytest.mark.parametrize("build", [gpt2, llama], ids=["gpt2", "llama"])
def test_fused_head_trains_like_the_unfused_loss_in_trainer(tmp_path, build):
    start = build().state_dict()
    unfused, l1 = train(build(), tmp_path / "u", batch=2, accum=2,
                        compute_loss_func=loss_func(0.1))
    fused, l2 = train(use_fused_loss(build(), 0.1), tmp_path / "f", batch=2, accum=2)
    assert moved(unfused, start) > 1e-2
    assert max_diff(unfused, fused) < 1e-5
    assert l2 == pytest.approx(l1, rel=1e-5)


def test_fused_head_equals_hf_label_smoothing_in_trainer(tmp_path):
    hf, _ = train(gpt2(), tmp_path / "hf", batch=2, accum=2, smoothing_factor=0.1)
    fused, _ = train(use_fused_loss(gpt2(), 0.1), tmp_path / "f", batch=2, accum=2)
    assert max_diff(hf, fused) < 1e-5


def test_use_fused_loss_checks_and_repatches(tmp_path):
    with pytest.raises(TypeError, match="model"):
        use_fused_loss(torch.nn.Linear(3, 3))
    with pytest.raises(TypeError, match="chunk_sz"):
        use_fused_loss(gpt2(), 0.1, chunk_sz=4)
    model = use_fused_loss(gpt2(), 0.1)
    original = model.forward.__func__.original
    use_fused_loss(model, 0.3)  # replaces the options, keeps the original forward
    assert model.forward.__func__.original is original
    assert model.forward.__func__.label_smoothing == 0.3
    # A deep copy (EMA, a teacher) runs its own weights, fused or not.
    import copy

    twin = copy.deepcopy(model)
    with torch.no_grad():
        twin.lm_head.weight.mul_(2.0)  # tied to the input embedding in GPT-2
    ids = torch.randint(0, VOCAB, (2, 5))
    want = transformers.GPT2LMHeadModel.forward(twin, input_ids=ids).logits
    torch.testing.assert_close(twin(input_ids=ids).logits, want)
    assert not torch.allclose(model(input_ids=ids).logits, want)
    batch = torch.utils.data.default_collate(dataset(2))
    twin_loss = twin(**batch).loss
    use_fused_loss(twin, 0.3)
    assert twin(**batch).loss == twin_loss and model(**batch).loss != twin_loss
    model.save_pretrained(tmp_path)  # the class and its weights are untouched
    reloaded = transformers.GPT2LMHeadModel.from_pretrained(tmp_path)
    assert max_diff(reloaded.state_dict(), model.state_dict()) == 0.0


@pytest.mark.parametrize("build", [gpt2, llama], ids=["gpt2", "llama"])
@pytest.mark.parametrize("kind", ["num_classes", "class_mask"])
def test_padded_vocabulary_passes_through(build, kind):
    """A checkpoint whose embedding table is padded past the tokenizer (37 rows, 30 tokens):
    num_classes= / class_mask= reach cross_entropy (loss_func) and linear_cross_entropy (the
    fused head); both equal the dense loss on the 30 real columns, and the padded rows of the
    output layer get exactly zero gradient."""
    real = 30
    batch = torch.utils.data.default_collate(dataset(4))
    batch["input_ids"] = batch["input_ids"] % real
    batch["labels"] = torch.where(batch["labels"] >= 0, batch["labels"] % real, -100)
    mask = torch.arange(VOCAB) < real
    opts = dict(num_classes=real) if kind == "num_classes" else dict(class_mask=mask)
    plain = build()
    logits = plain(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    got = loss_func(0.1, spread="others", **opts)(logits, batch["labels"], num_items_in_batch=25)
    want = loss_func(0.1, spread="others")(logits[..., :real], batch["labels"],
                                           num_items_in_batch=25)
    torch.testing.assert_close(got, want)
    got.backward()
    head = plain.get_output_embeddings().weight
    assert torch.equal(head.grad[real:], torch.zeros_like(head.grad[real:]))
    fused = use_fused_loss(build(), 0.1, spread="others", **opts)
    out = fused(**batch, num_items_in_batch=25)
    torch.testing.assert_close(out.loss, want, rtol=1e-5, atol=1e-6)
    out.loss.backward()
    fhead = fused.get_output_embeddings().weight
    assert torch.equal(fhead.grad[real:], torch.zeros_like(fhead.grad[real:]))
    torch.testing.assert_close(fhead.grad, head.grad, rtol=1e-4, atol=1e-6)


def test_terms_pass_through_both_entry_points():
    """confidence_penalty / poly / focal_gamma reach cross_entropy (loss_func) and
    linear_cross_entropy (use_fused_loss): the fused head equals loss_func on the logits with the
    same terms, loss and gradients; a bad term fails at the call like the losses' own."""
    batch = torch.utils.data.default_collate(dataset(4))
    terms = dict(confidence_penalty=0.2, poly=0.5, focal_gamma="flsd-53")
    plain = gpt2()
    logits = plain(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    want = loss_func(0.1, **terms)(logits, batch["labels"], num_items_in_batch=25)
    direct = ls.cross_entropy(logits[:, :-1].reshape(-1, VOCAB), batch["labels"][:, 1:].reshape(-1),
                              label_smoothing=0.1, reduction="sum", **terms) / 25
    torch.testing.assert_close(want, direct)
    plain_loss = loss_func(0.1)(logits, batch["labels"], 25)
    assert abs(float(want.detach()) - float(plain_loss.detach())) > 1e-3  # the terms count
    want.backward()
    fused = use_fused_loss(gpt2(), 0.1, **terms)
    out = fused(**batch, num_items_in_batch=25)
    torch.testing.assert_close(out.loss, want, rtol=1e-5, atol=1e-6)
    out.loss.backward()
    for (name, p), q in zip(plain.named_parameters(), fused.parameters()):
        torch.testing.assert_close(q.grad, p.grad, rtol=1e-4, atol=1e-6, msg=name)
    with pytest.raises(ValueError, match="focal_gamma"):
        use_fused_loss(gpt2(), 0.1, focal_gamma=-1.0)(**batch)
