"""BiT HyperRule (Kolesnikov et al., "Big Transfer", 2020) as used by DFB.

The whole training rule in four pure functions: schedule boundaries, learning rate,
MixUp alpha and the scaling of the schedule to a user-chosen number of steps.

DFB's release keeps BiT's rule with one change: every dataset of 3k to 500k images
(CIFAR-10/100 included) gets the 10k-step schedule.
"""

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


def get_lr(step, schedule, base_lr):
    """Learning rate at `step` (0-based): linear warm-up, then x0.1 at each decay boundary.

    Returns None once the schedule is over, which is the signal to stop.
    """
    warmup, *decays, stop = schedule
    if step >= stop:
        return None
    if step < warmup:
        return base_lr * step / warmup
    return base_lr * 0.1 ** sum(step >= boundary for boundary in decays)


def get_mixup(dataset_size):
    """MixUp alpha: only large enough datasets profit from it."""
    return 0.0 if dataset_size < MIXUP_DATASET else 0.1
