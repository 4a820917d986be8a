"""BiT HyperRule (Kolesnikov et al., "Big Transfer", 2020) as used by DFB.

The whole training rule in pure functions: schedule boundaries, learning rate, MixUp
alpha and the scaling of the schedule to a user-chosen number of steps. `get_cosine_lr`
and `get_linear_lr` are opt-in alternatives for training from scratch (train.py --schedule
cosine / linear); the BiT rule stays the default.

DFB's release keeps BiT's rule with one change: every dataset of 3k to 500k images
(CIFAR-10/100 included) gets the 10k-step schedule.
"""

import math

SMALL_DATASET = 3_000       # below: the short BiT schedule
MIXUP_DATASET = 20_000      # from here on: MixUp with alpha 0.1
LARGE_DATASET = 500_000     # from here on: the long schedule


def get_schedule(dataset_size):
    """Step boundaries [warm-up end, decay 1, decay 2, decay 3, stop]."""
    if dataset_size < SMALL_DATASET:
        return [100, 200, 300, 400, 500]
    if dataset_size < LARGE_DATASET:
        return [500, 3000, 6000, 9000, 10_000]
    return [500, 6000, 12_000, 18_000, 20_000]


def scale_schedule(schedule, total_steps):
    """Stretch or shrink the boundaries so that the run stops at `total_steps`.

    Warm-up and decays keep their relative positions; every boundary is at least one
    step after the previous one, so a very short run still warms up and decays.
    """
    if total_steps < len(schedule):
        raise ValueError(f"--steps must be at least {len(schedule)} (got {total_steps})")
    stop = schedule[-1]
    scaled = []
    for boundary in schedule[:-1]:
        step = max(round(boundary * total_steps / stop), scaled[-1] + 1 if scaled else 1)
        scaled.append(step)
    return scaled + [total_steps]


def with_warmup(schedule, warmup_steps, rule="bit"):
    """The schedule with its warm-up boundary replaced (None: unchanged). The warm-up must end
    before the first decay of the BiT rule, and before the stop of the cosine rule (which
    ignores the decay boundaries)."""
    if warmup_steps is None:
        return list(schedule)
    limit, what = (schedule[1], "first decay") if rule == "bit" else (schedule[-1], "stop")
    if not 0 <= warmup_steps < limit:
        raise ValueError(f"--warmup_steps must be in [0, {limit}) (the {what} of the schedule {list(schedule)}), "
                         f"got {warmup_steps}")
    return [warmup_steps, *schedule[1:]]


def _check_step(step, stop):
    if not 0 <= step < stop:
        raise ValueError(f"step {step} is outside the schedule's steps 0..{stop - 1}")


def get_lr(step, schedule, base_lr):
    """Learning rate of step `step` (0-based, < stop): linear warm-up, then /10 per decay boundary passed.

    The official rule (big_transfer bit_hyperrule.get_lr) divides by 10 for every boundary s
    with `s < step`, so a decay at boundary 3000 first applies at step 3001; the division is
    repeated as there, so the rates are bit-identical to the official ones.
    """
    warmup, *decays, stop = schedule
    _check_step(step, stop)
    if step < warmup:
        return base_lr * step / warmup
    for boundary in decays:
        if boundary < step:
            base_lr /= 10
    return base_lr


def get_cosine_lr(step, schedule, base_lr):
    """Learning rate of step `step` (0-based, < stop): linear warm-up over the schedule's first
    boundary, then half a cosine from base_lr down to 0 at the schedule's stop step.

    The BiT staircase is tuned for fine-tuning pretrained weights; from scratch a smooth decay
    to zero trains markedly better (train.py --schedule cosine).
    """
    warmup, stop = schedule[0], schedule[-1]
    _check_step(step, stop)
    if step < warmup:
        return base_lr * step / warmup
    return base_lr * 0.5 * (1 + math.cos(math.pi * (step - warmup) / (stop - warmup)))


def get_linear_lr(step, schedule, base_lr):
    """Learning rate of step `step` (0-based, < stop): linear warm-up over the schedule's first
    boundary, then a straight line from base_lr down to 0 at the schedule's stop step (the decay of
    the fast CIFAR recipes, e.g. the DAWNBench ResNet-9 and airbench; train.py --schedule linear)."""
    warmup, stop = schedule[0], schedule[-1]
    _check_step(step, stop)
    if step < warmup:
        return base_lr * step / warmup
    return base_lr * (stop - step) / (stop - warmup)


LR_RULES = {"bit": get_lr, "cosine": get_cosine_lr, "linear": get_linear_lr}


def get_mixup(dataset_size):
    """MixUp alpha: only large enough datasets profit from it."""
    return 0.0 if dataset_size < MIXUP_DATASET else 0.1
