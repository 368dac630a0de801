"""Parameter groups (weight decay, layer-wise LR decay) and LR schedules."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from transformers import BertConfig, BertForMaskedLM, BertForSequenceClassification

from distill.errors import UserError
from distill.train.optim import build_optimizer, build_scheduler, parameter_groups

LR, DECAY, WEIGHT_DECAY = 1e-3, 0.5, 0.01


def tiny_bert_config() -> BertConfig:
    return BertConfig(
        vocab_size=99,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=37,
        max_position_embeddings=64,
        num_labels=3,
    )


def group_of(groups: list[dict], model: nn.Module) -> dict[str, dict]:
    by_id = {id(param): group for group in groups for param in group["params"]}
    return {name: by_id[id(param)] for name, param in model.named_parameters()}


def test_layer_wise_lr_on_tiny_bert() -> None:
    torch.manual_seed(0)
    model = BertForSequenceClassification(tiny_bert_config())
    groups = parameter_groups(model, LR, WEIGHT_DECAY, DECAY)
    lr_of = {name: group["lr"] for name, group in group_of(groups, model).items()}

    for name, lr in lr_of.items():
        if name.startswith("bert.embeddings."):
            expected = LR * DECAY**2
        elif name.startswith("bert.encoder.layer.0."):
            expected = LR * DECAY
        elif name.startswith(("bert.encoder.layer.1.", "bert.pooler.", "classifier.")):
            expected = LR
        else:
            pytest.fail(f"unexpected parameter {name}")
        assert lr == pytest.approx(expected), name
    assert {round(lr / LR, 6) for lr in lr_of.values()} == {0.25, 0.5, 1.0}


def test_weight_decay_only_on_weights_that_are_not_norms() -> None:
    torch.manual_seed(0)
    model = BertForSequenceClassification(tiny_bert_config())
    groups = parameter_groups(model, LR, WEIGHT_DECAY, DECAY)
    decay_of = {name: group["weight_decay"] for name, group in group_of(groups, model).items()}

    no_decay = {name for name, wd in decay_of.items() if wd == 0.0}
    expected_no_decay = {
        name for name in decay_of if name.endswith(".bias") or ".LayerNorm." in name
    }
    assert no_decay == expected_no_decay
    assert decay_of["bert.embeddings.word_embeddings.weight"] == WEIGHT_DECAY
    assert decay_of["bert.encoder.layer.0.attention.self.query.weight"] == WEIGHT_DECAY
    assert decay_of["classifier.weight"] == WEIGHT_DECAY


class OddlyNamedNorms(nn.Module):
    """Norm layers whose names give no hint, to show detection goes by module type."""

    class ScaleNorm(nn.Module):
        def __init__(self, width: int) -> None:
            super().__init__()
            self.scale = nn.Parameter(torch.ones(width))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.scale * x / x.norm(dim=-1, keepdim=True)

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(10, 8)
        self.ln = nn.LayerNorm(8)
        self.post = self.ScaleNorm(8)
        self.conv = nn.Conv1d(8, 4, 3)
        self.out = nn.Linear(4, 2)


def test_model_without_layers_gets_two_groups_at_full_lr() -> None:
    model = OddlyNamedNorms()
    groups = parameter_groups(model, LR, WEIGHT_DECAY, DECAY)

    assert len(groups) == 2
    assert all(group["lr"] == LR for group in groups)
    decay_of = {name: group["weight_decay"] for name, group in group_of(groups, model).items()}
    assert decay_of == {
        "embed.weight": WEIGHT_DECAY,
        "ln.weight": 0.0,
        "ln.bias": 0.0,
        "post.scale": 0.0,
        "conv.weight": WEIGHT_DECAY,
        "conv.bias": 0.0,
        "out.weight": WEIGHT_DECAY,
        "out.bias": 0.0,
    }


def test_tied_mlm_head_is_grouped_once_and_head_bias_at_full_lr() -> None:
    model = BertForMaskedLM(tiny_bert_config())
    groups = parameter_groups(model, LR, WEIGHT_DECAY, DECAY)
    grouped = [param for group in groups for param in group["params"]]

    assert len(grouped) == len({id(p) for p in grouped}) == len(list(model.parameters()))
    lr_of = {name: group["lr"] for name, group in group_of(groups, model).items()}
    assert lr_of["cls.predictions.transform.dense.weight"] == pytest.approx(LR)
    assert lr_of["bert.embeddings.word_embeddings.weight"] == pytest.approx(LR * DECAY**2)


def test_frozen_parameters_are_left_out_and_extra_modules_join_at_full_lr() -> None:
    model = BertForSequenceClassification(tiny_bert_config())
    model.bert.embeddings.requires_grad_(False)
    projection = nn.Linear(32, 16)
    optimizer = build_optimizer(model, LR, WEIGHT_DECAY, DECAY, extra_modules=[projection])

    grouped = {id(p) for group in optimizer.param_groups for p in group["params"]}
    assert not any(id(p) in grouped for p in model.bert.embeddings.parameters())
    projection_groups = [g for g in optimizer.param_groups if g["name"].startswith("extra_0.")]
    assert {id(p) for g in projection_groups for p in g["params"]} == {
        id(projection.weight),
        id(projection.bias),
    }
    assert all(group["lr"] == LR for group in projection_groups)


def test_bad_layer_decay_is_a_user_error() -> None:
    with pytest.raises(UserError, match="layer_lr_decay"):
        parameter_groups(nn.Linear(2, 2), LR, WEIGHT_DECAY, 1.5)


def lrs_over_steps(name: str, total: int, warmup_ratio: float) -> list[float]:
    optimizer = torch.optim.AdamW([nn.Parameter(torch.zeros(1))], lr=1.0)
    scheduler = build_scheduler(optimizer, name, total, warmup_ratio)
    lrs = []
    for _ in range(total + 1):
        lrs.append(scheduler.get_last_lr()[0])
        optimizer.step()
        scheduler.step()
    return lrs


def test_linear_schedule_follows_warmup_then_linear_decay() -> None:
    total, warmup = 10, 3  # warmup = ceil(10 * 0.25)
    expected = [
        step / warmup if step < warmup else (total - step) / (total - warmup)
        for step in range(total + 1)
    ]
    assert lrs_over_steps("linear", total, 0.25) == pytest.approx(expected)
    assert lrs_over_steps("linear", total, 0.25)[:4] == pytest.approx([0, 1 / 3, 2 / 3, 1.0])


def test_cosine_and_constant_schedules() -> None:
    total, warmup = 10, 2
    cosine = [
        step / warmup
        if step < warmup
        else 0.5 * (1 + math.cos(math.pi * (step - warmup) / (total - warmup)))
        for step in range(total + 1)
    ]
    assert lrs_over_steps("cosine", total, 0.2) == pytest.approx(cosine)
    assert lrs_over_steps("constant", total, 0.2) == pytest.approx([1.0] * (total + 1))
    assert lrs_over_steps("constant_with_warmup", total, 0.2) == pytest.approx(
        [0.0, 0.5] + [1.0] * (total - 1)
    )


def test_unknown_schedule_is_a_user_error() -> None:
    optimizer = torch.optim.AdamW([nn.Parameter(torch.zeros(1))], lr=1.0)
    with pytest.raises(UserError, match="cosine"):
        build_scheduler(optimizer, "exponential", 10, 0.1)


def test_two_optimizer_steps_follow_the_adamw_formula() -> None:
    """AdamW by hand (decoupled weight decay, bias-corrected moments) on a 2x2 weight and its bias."""
    torch.manual_seed(0)
    layer = nn.Linear(2, 2)
    optimizer = build_optimizer(layer, lr=0.1, weight_decay=0.5)
    assert optimizer.defaults["fused"]  # float CPU tensors take the one-kernel update
    beta1, beta2, eps = 0.9, 0.999, 1e-8
    expected = {name: param.detach().clone() for name, param in layer.named_parameters()}
    moments = {name: (torch.zeros_like(value), torch.zeros_like(value)) for name, value in expected.items()}
    for step in (1, 2):
        grads = {name: torch.full_like(value, 0.5 * step) + value for name, value in expected.items()}
        for name, param in layer.named_parameters():
            param.grad = grads[name].clone()
        optimizer.step()
        for name, value in expected.items():
            decay = 0.0 if name == "bias" else 0.5  # biases are not decayed
            first, second = moments[name]
            first = beta1 * first + (1 - beta1) * grads[name]
            second = beta2 * second + (1 - beta2) * grads[name] ** 2
            moments[name] = (first, second)
            value = value * (1 - 0.1 * decay)
            update = (first / (1 - beta1**step)) / ((second / (1 - beta2**step)).sqrt() + eps)
            expected[name] = value - 0.1 * update
    for name, param in layer.named_parameters():
        torch.testing.assert_close(param.detach(), expected[name], rtol=1e-5, atol=1e-6)
