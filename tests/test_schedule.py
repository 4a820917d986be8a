import pytest

from utils.schedule import get_lr, get_mixup, get_schedule, scale_schedule


def test_cifar_schedule_is_the_dfb_rule():
    # DESIGN.md: warm-up 500, x0.1 after 3000, 6000, 9000, stop at 10000 for 3k-500k images
    assert get_schedule(50_000) == [500, 3000, 6000, 9000, 10_000]
    assert get_schedule(3_000) == [500, 3000, 6000, 9000, 10_000]
    assert get_schedule(2_999)[-1] == 500
    assert get_schedule(1_000_000)[-1] == 20_000


def test_learning_rate_warmup_decay_and_stop():
    schedule = [500, 3000, 6000, 9000, 10_000]
    base = 0.003
    assert get_lr(0, schedule, base) == 0.0
    assert get_lr(250, schedule, base) == pytest.approx(base / 2)
    assert get_lr(500, schedule, base) == pytest.approx(base)
    assert get_lr(2999, schedule, base) == pytest.approx(base)
    assert get_lr(3000, schedule, base) == pytest.approx(base * 0.1)
    assert get_lr(6000, schedule, base) == pytest.approx(base * 0.01)
    assert get_lr(9999, schedule, base) == pytest.approx(base * 0.001)
    assert get_lr(10_000, schedule, base) is None


def test_mixup_only_for_large_datasets():
    assert get_mixup(19_999) == 0.0
    assert get_mixup(50_000) == 0.1


def test_scaled_schedule_keeps_proportions():
    assert scale_schedule([500, 3000, 6000, 9000, 10_000], 1000) == [50, 300, 600, 900, 1000]
    tiny = scale_schedule([500, 3000, 6000, 9000, 10_000], 6)
    assert tiny == sorted(set(tiny)) and tiny[-1] == 6
    with pytest.raises(ValueError, match="--steps"):
        scale_schedule([500, 3000, 6000, 9000, 10_000], 3)
