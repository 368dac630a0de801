"""Exponential moving average of weights."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from distill.errors import UserError
from distill.train.ema import EMA


class Tiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.tensor([1.0, -2.0]))
        self.count = nn.Parameter(torch.tensor([3]), requires_grad=False)  # integer: not averaged


def set_weight(model: Tiny, values: list[float]) -> None:
    with torch.no_grad():
        model.weight.copy_(torch.tensor(values))


def test_shadow_follows_the_formula_over_three_steps() -> None:
    model = Tiny()
    ema = EMA(model, decay=0.9)
    # By hand, decay 0.9, starting from the initial weights [1, -2]:
    #   after [2, 0]:  0.9·[1, -2]      + 0.1·[2, 0]  = [1.1,   -1.8]
    #   after [4, 1]:  0.9·[1.1, -1.8]  + 0.1·[4, 1]  = [1.39,  -1.52]
    #   after [8, -1]: 0.9·[1.39,-1.52] + 0.1·[8, -1] = [2.051, -1.468]
    for values in ([2.0, 0.0], [4.0, 1.0], [8.0, -1.0]):
        set_weight(model, values)
        ema.update()
    assert ema.shadow["weight"].tolist() == pytest.approx([2.051, -1.468], abs=1e-6)
    assert "count" not in ema.shadow


def test_apply_to_swaps_shadow_in_and_trained_weights_back() -> None:
    model = Tiny()
    ema = EMA(model, decay=0.5)
    set_weight(model, [3.0, 4.0])
    ema.update()  # shadow = [2, 1]
    trained = model.weight.detach().clone()

    with ema.apply_to(model):
        assert model.weight.tolist() == pytest.approx([2.0, 1.0])
    assert torch.equal(model.weight, trained)


def test_apply_to_restores_even_when_the_body_raises() -> None:
    model = Tiny()
    ema = EMA(model, decay=0.5)
    set_weight(model, [3.0, 4.0])
    trained = model.weight.detach().clone()
    with pytest.raises(RuntimeError), ema.apply_to(model):
        raise RuntimeError("evaluation failed")
    assert torch.equal(model.weight, trained)


def test_state_dict_round_trip() -> None:
    model = Tiny()
    ema = EMA(model, decay=0.5)
    set_weight(model, [5.0, 0.0])
    ema.update()  # shadow = [3, -1]

    restored = EMA(Tiny(), decay=0.9)
    restored.load_state_dict(ema.state_dict())
    assert restored.decay == 0.5
    assert restored.shadow["weight"].tolist() == [3.0, -1.0]


def test_decay_outside_unit_interval_is_a_user_error() -> None:
    with pytest.raises(UserError, match="decay"):
        EMA(Tiny(), decay=1.0)
