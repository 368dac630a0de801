"""Weight averages by hand: EMA with its warm-up and SWA's running mean, saved and resumed; SWA in the loop."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from distill.errors import UserError
from distill.train.averaging import EMA, SWA


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


def test_swa_is_the_plain_mean_of_the_weights_at_its_steps() -> None:
    model = Tiny()
    swa = SWA(model, start=4, every=3)
    assert not swa.ready
    for step in range(1, 11):
        set_weight(model, [float(step), float(step * step)])
        swa.update(step)
    # steps 4, 7 and 10: weights (4, 16), (7, 49), (10, 100)
    assert swa.num_updates == 3 and swa.ready
    assert torch.allclose(swa.shadow["weight"], torch.tensor([(4 + 7 + 10) / 3, (16 + 49 + 100) / 3]))
    resumed_model = Tiny()
    resumed = SWA(resumed_model, start=4, every=3)
    resumed.load_state_dict(swa.state_dict())
    for each_model, each in ((model, swa), (resumed_model, resumed)):
        set_weight(each_model, [13.0, 0.0])
        each.update(13)
    assert torch.equal(resumed.shadow["weight"], swa.shadow["weight"])
    assert torch.allclose(swa.shadow["weight"], torch.tensor([(4 + 7 + 10 + 13) / 4, (16 + 49 + 100) / 4]))


def test_swa_needs_steps_inside_the_run() -> None:
    with pytest.raises(UserError, match="start step >= 1"):
        SWA(Tiny(), start=0, every=5)


def test_swa_in_the_loop_leaves_the_mean_of_the_weights_it_saw_and_holds_the_rate(tmp_path) -> None:
    """9 steps, swa_start 0.3 -> step 2, every 3: the weights after steps 2, 5 and 8 (seen by
    the loss of steps 3, 6 and 9) are averaged; the steps after the first averaged one run at
    one constant rate."""
    from torch.nn import functional as F
    from torch.optim.optimizer import register_optimizer_step_post_hook

    from distill.train.loop import TrainConfig, train

    torch.manual_seed(0)
    model = nn.Linear(3, 2)
    data = [{"x": torch.randn(3), "y": torch.tensor(i % 2)} for i in range(18)]
    seen: list[torch.Tensor] = []
    rates: list[float] = []

    def loss_fn(net: nn.Module, batch: dict) -> tuple[torch.Tensor, dict]:
        seen.append(net.weight.detach().clone())
        return F.cross_entropy(net(batch["x"]), batch["y"]), {}

    def collate(items: list[dict]) -> dict:
        return {key: torch.stack([item[key] for item in items]) for key in items[0]}

    cfg = TrainConfig(epochs=1, lr=0.1, batch_size=2, warmup_ratio=0.0, swa_start=0.3, swa_every=3, checkpoint_every=100)
    with register_optimizer_step_post_hook(lambda optimizer, args, kwargs: rates.append(optimizer.param_groups[0]["lr"])):
        result = train(model, loss_fn, data, cfg, collate=collate, work_dir=tmp_path)
    assert result.global_steps == 9 and len(seen) == 9
    expected = (seen[2] + seen[5] + seen[8]) / 3  # seen[k] = the weights after step k
    assert torch.allclose(model.weight.detach(), expected, atol=1e-6)
    # linear decay over 9 steps: 0.1, 0.1·8/9, then held at the schedule's rate after 2 steps (0.1·7/9)
    assert rates[:2] == pytest.approx([0.1, 0.1 * 8 / 9]) and rates[2:] == pytest.approx([0.1 * 7 / 9] * 7)
