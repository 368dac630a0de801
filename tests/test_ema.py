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


class Scalar(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.value = nn.Parameter(torch.tensor(0.0))


def test_first_updates_warm_up_with_decay_one_plus_t_over_ten_plus_t() -> None:
    model = Scalar()
    ema = EMA(model, decay=0.999)
    # By hand, from the initial 0; update t uses decay (1+t)/(10+t), far below 0.999:
    #   t=1, param 11, decay 2/11: 2/11·0     + 9/11·11 = 9
    #   t=2, param 12, decay 3/12: 3/12·9     + 9/12·12 = 11.25
    #   t=3, param 13, decay 4/13: 4/13·11.25 + 9/13·13 = 45/13 + 9 = 162/13
    shadows = []
    for value in (11.0, 12.0, 13.0):
        with torch.no_grad():
            model.value.fill_(value)
        ema.update()
        shadows.append(ema.shadow["value"].item())
    assert shadows == pytest.approx([9.0, 11.25, 162 / 13], rel=1e-6)
    assert ema.num_updates == 3


def test_decay_is_capped_at_the_setting_after_the_warm_up() -> None:
    model = Tiny()
    ema = EMA(model, decay=0.2)
    # t=1: min(0.2, 2/11) = 2/11; t=2: min(0.2, 3/12) = 0.2.
    #   after [12, 9]: 2/11·[1, -2]  + 9/11·[12, 9] = [10, 7]
    #   after [5, 2]:  0.2·[10, 7]   + 0.8·[5, 2]   = [6, 3]
    for values in ([12.0, 9.0], [5.0, 2.0]):
        set_weight(model, values)
        ema.update()
    assert ema.shadow["weight"].tolist() == pytest.approx([6.0, 3.0], abs=1e-6)
    assert "count" not in ema.shadow


def test_apply_to_swaps_shadow_in_and_trained_weights_back() -> None:
    model = Tiny()
    ema = EMA(model, decay=0.5)
    set_weight(model, [3.0, 4.0])
    ema.update()
    trained = model.weight.detach().clone()

    with ema.apply_to(model):
        assert torch.equal(model.weight, ema.shadow["weight"])
    assert torch.equal(model.weight, trained)


def test_apply_to_restores_even_when_the_body_raises() -> None:
    model = Tiny()
    ema = EMA(model, decay=0.5)
    set_weight(model, [3.0, 4.0])
    trained = model.weight.detach().clone()
    with pytest.raises(RuntimeError), ema.apply_to(model):
        raise RuntimeError("evaluation failed")
    assert torch.equal(model.weight, trained)


def test_state_dict_round_trip_resumes_the_warm_up_exactly() -> None:
    model = Tiny()
    ema = EMA(model, decay=0.5)
    for values in ([5.0, 0.0], [2.0, 7.0]):
        set_weight(model, values)
        ema.update()

    resumed_model = Tiny()
    resumed = EMA(resumed_model, decay=0.9)
    resumed.load_state_dict(ema.state_dict())
    assert (resumed.decay, resumed.num_updates) == (0.5, 2)
    assert torch.equal(resumed.shadow["weight"], ema.shadow["weight"])

    # The next update uses decay 4/13 (t = 3) in both, as an uninterrupted run would.
    for each_model, each_ema in ((model, ema), (resumed_model, resumed)):
        set_weight(each_model, [-1.0, 3.0])
        each_ema.update()
    assert torch.equal(resumed.shadow["weight"], ema.shadow["weight"])
    assert ema.num_updates == resumed.num_updates == 3


def test_state_without_an_update_count_is_a_user_error() -> None:
    ema = EMA(Tiny(), decay=0.5)
    state = ema.state_dict()
    del state["num_updates"]
    with pytest.raises(UserError, match="update count"):
        EMA(Tiny(), decay=0.5).load_state_dict(state)


def test_decay_outside_unit_interval_is_a_user_error() -> None:
    with pytest.raises(UserError, match="decay"):
        EMA(Tiny(), decay=1.0)
