"""Averages of the network's weights: an exponential moving average (`train.py --ema_decay`) and
airbench's lookahead (`train.py --lookahead`).

The fast CIFAR recipes evaluate an average of the last weights instead of the last weights
themselves (hlb-CIFAR10's EMA, airbench's lookahead). The average covers the whole state dict:
parameters and BatchNorm's running statistics alike (integer buffers are copied), so the averaged
network is a consistent one. At the end of a run train.py evaluates and keeps the average in place of
the last weights; checkpoints in between carry both, so a resumed run averages as an uninterrupted one.
"""
import torch
import torch.nn as nn

# The decay warms up as TensorFlow's ExponentialMovingAverage(num_updates) does: without it the
# average would hold on to the random initial weights for about 1 / (1 - decay) steps.
WARMUP_OFFSET = 10


def decay_at(decay: float, updates: int) -> float:
    """The decay of update number `updates` (1, 2, ...): min(decay, (1 + n) / (10 + n))."""
    return min(decay, (1 + updates) / (WARMUP_OFFSET + updates))


class WeightAverage:
    """average <- d * average + (1 - d) * weights of `model` (the unwrapped network, whose state dict
    the checkpoints hold), after every optimizer step (`update`)."""

    def __init__(self, model: nn.Module, decay: float, state: dict | None = None):
        if not 0 < decay < 1:
            raise ValueError(f"--ema_decay {decay}: expected a value in (0, 1)")
        self.model, self.decay = model, decay
        self.updates = 0
        self.average = {key: value.detach().clone() for key, value in model.state_dict().items()}
        if state is not None:
            self.load_state_dict(state)

    @torch.no_grad()
    def update(self) -> None:
        self.updates += 1
        self._move_average(1 - decay_at(self.decay, self.updates))

    @torch.no_grad()
    def _move_average(self, weight: float) -> tuple[list, list]:
        """average <- average + weight * (weights - average) for the floating-point entries (integer
        buffers are copied); returns (the averaged tensors, the network's own), in the same order."""
        averaged, current = [], []
        for key, value in self.model.state_dict().items():
            if value.is_floating_point():
                averaged.append(self.average[key])
                current.append(value.detach())
            else:
                self.average[key].copy_(value)
        torch._foreach_lerp_(averaged, current, weight)
        return averaged, current

    def state_dict(self) -> dict:
        return {"decay": self.decay, "updates": self.updates, "average": self.average}

    def load_state_dict(self, state: dict) -> None:
        if set(state["average"]) != set(self.average):
            raise ValueError("the stored weight average does not hold this network's weights")
        self.updates = int(state["updates"])
        for key, value in state["average"].items():
            self.average[key].copy_(value)

    def copy_to_model(self) -> None:
        """Replace the network's weights with the average (what the end of a run evaluates and keeps)."""
        self.model.load_state_dict(self.average)


# airbench94's lookahead (KellerJordan/cifar10-airbench): every 5 steps the slow weights take a step towards
# the network's, and the network restarts from them; the pull grows with the cube of the run's progress.
LOOKAHEAD_EVERY = 5
LOOKAHEAD_DECAY = 0.95 ** 5


def lookahead_decay(step: int, total_steps: int) -> float:
    """The slow weights' decay at optimizer step `step` (1, 2, ...) of `total_steps`: 0.95^5 (step / total)^3."""
    return LOOKAHEAD_DECAY * (step / total_steps) ** 3


class Lookahead(WeightAverage):
    """After every LOOKAHEAD_EVERY-th optimizer step n: slow <- d * slow + (1 - d) * weights, then
    weights <- slow, d = lookahead_decay(n, total_steps); the end of the run keeps the slow weights
    (`copy_to_model`). Like WeightAverage it covers the whole state dict, BatchNorm's statistics included."""

    def __init__(self, model: nn.Module, total_steps: int, state: dict | None = None):
        if total_steps < 1:
            raise ValueError(f"lookahead needs at least one step, got {total_steps}")
        self.total_steps = total_steps
        super().__init__(model, LOOKAHEAD_DECAY, state)

    @torch.no_grad()
    def update(self) -> None:
        self.updates += 1
        if self.updates % LOOKAHEAD_EVERY == 0:
            slow, fast = self._move_average(1 - lookahead_decay(self.updates, self.total_steps))
            torch._foreach_copy_(fast, slow)  # the network restarts from the slow weights
