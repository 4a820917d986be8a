import math

import pytest

from utils.train.schedule import (LR_RULES, get_cosine_lr, get_linear_lr, get_lr, get_mixup, get_schedule,
                                  scale_schedule, with_warmup)


def test_cifar_schedule_is_the_dfb_rule():
    # the release's BiT HyperRule (utils/train/schedule.py): warm-up 500, x0.1 after 3000, 6000, 9000, stop at 10000 for 3k-500k images
    assert get_schedule(50_000) == [500, 3000, 6000, 9000, 10_000]
    assert get_schedule(3_000) == [500, 3000, 6000, 9000, 10_000]
    assert get_schedule(2_999)[-1] == 500
    assert get_schedule(1_000_000)[-1] == 20_000


def test_learning_rate_warmup_and_decay_follow_the_official_rule():
    # big_transfer bit_hyperrule.get_lr: `for s in supports[1:]: if s < step: base_lr /= 10`,
    # so the decay at 3000 first applies at step 3001 (the rates below are that loop by hand).
    schedule = [500, 3000, 6000, 9000, 10_000]
    base = 0.003
    assert get_lr(0, schedule, base) == 0.0
    assert get_lr(250, schedule, base) == base * 250 / 500
    assert get_lr(500, schedule, base) == base
    assert get_lr(2999, schedule, base) == base
    assert get_lr(3000, schedule, base) == base
    assert get_lr(3001, schedule, base) == base / 10
    assert get_lr(6000, schedule, base) == base / 10
    assert get_lr(6001, schedule, base) == base / 10 / 10
    assert get_lr(9999, schedule, base) == base / 10 / 10 / 10
    for outside in (-1, 10_000):
        with pytest.raises(ValueError, match="outside"):
            get_lr(outside, schedule, base)


def test_cosine_learning_rate_by_hand():
    schedule = [100, 3000, 6000, 9000, 1100]  # decay boundaries are ignored by the cosine rule
    base = 0.1
    assert get_cosine_lr(0, schedule, base) == 0.0
    assert get_cosine_lr(50, schedule, base) == pytest.approx(0.05)
    assert get_cosine_lr(100, schedule, base) == pytest.approx(0.1)            # cos(0) = 1
    assert get_cosine_lr(350, schedule, base) == pytest.approx(0.1 * (1 + math.sqrt(0.5)) / 2)  # quarter way
    assert get_cosine_lr(600, schedule, base) == pytest.approx(0.05)           # half way: cos(pi/2) = 0
    assert get_cosine_lr(1099, schedule, base) == pytest.approx(0.1 * (1 - math.cos(math.pi / 1000)) / 2)
    with pytest.raises(ValueError, match="outside"):
        get_cosine_lr(1100, schedule, base)


def test_warmup_override():
    schedule = [500, 3000, 6000, 9000, 10_000]
    assert with_warmup(schedule, None) == schedule
    assert with_warmup(schedule, 0) == [0, 3000, 6000, 9000, 10_000]
    assert get_lr(0, with_warmup(schedule, 0), 1.0) == 1.0
    assert with_warmup(schedule, 5000, rule="cosine")[0] == 5000
    with pytest.raises(ValueError, match="--warmup_steps must be in \\[0, 3000\\)"):
        with_warmup(schedule, 3000)
    with pytest.raises(ValueError, match="--warmup_steps"):
        with_warmup(schedule, 10_000, rule="cosine")


def test_mixup_only_for_large_datasets():
    assert get_mixup(19_999) == 0.0
    assert get_mixup(50_000) == 0.1


def test_scaled_schedule_keeps_proportions():
    assert scale_schedule([500, 3000, 6000, 9000, 10_000], 1000) == [50, 300, 600, 900, 1000]
    tiny = scale_schedule([500, 3000, 6000, 9000, 10_000], 6)
    assert tiny == sorted(set(tiny)) and tiny[-1] == 6
    with pytest.raises(ValueError, match="--steps"):
        scale_schedule([500, 3000, 6000, 9000, 10_000], 3)


def test_linear_rule_warms_up_then_falls_in_a_straight_line_to_zero():
    schedule = [10, 30, 60, 90, 110]  # only the warm-up and the stop matter to this rule
    rates = [get_linear_lr(step, schedule, 0.4) for step in range(110)]
    assert rates[0] == 0 and rates[5] == pytest.approx(0.2) and rates[10] == pytest.approx(0.4)
    # after the warm-up: 0.4 * (110 - step) / 100, computed here as a straight line through two points
    for step in range(10, 110):
        assert rates[step] == pytest.approx(0.4 - 0.004 * (step - 10))
    assert rates[-1] == pytest.approx(0.004) and min(rates) >= 0
    assert LR_RULES["linear"] is get_linear_lr
    with pytest.raises(ValueError, match="outside"):
        get_linear_lr(110, schedule, 0.4)
