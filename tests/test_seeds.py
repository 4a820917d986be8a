"""Seeded draws (utils.base.runtime.mixed_seed) keep the seeds they had before the helper existed, so runs
started earlier draw the same batch orders, augmentations and pseudo-OOD images (and resume as before)."""
import torch

from datasets.batch_augment import patch_shuffle
from datasets.sources import GlobalBatchIndices, step_generator
from utils.base.runtime import mixed_seed
from utils.evaluate.sets import PatchShuffled


def _generator(seed):
    return torch.Generator().manual_seed(seed)


def test_mixed_seed_is_seed_times_stride_plus_counter():
    assert mixed_seed(3, 11) == 3 * 1_000_003 + 11
    assert mixed_seed(3, 11, stride=100_003) == 3 * 100_003 + 11
    assert len({mixed_seed(seed, counter, stride=5) for seed in range(4) for counter in range(5)}) == 20


def test_draws_keep_the_seeds_of_earlier_runs():
    seed = 3
    # the formulas these draws used before mixed_seed: seed * 100_003 + epoch, seed * 1_000_003 + step / index
    assert torch.equal(GlobalBatchIndices(50, 10, seed=seed).permutation(7),
                       torch.randperm(50, generator=_generator(seed * 100_003 + 7)))
    assert torch.equal(torch.rand(4, generator=step_generator(seed, 11, torch.device("cpu"))),
                       torch.rand(4, generator=_generator(seed * 1_000_003 + 11)))
    images = torch.arange(2 * 3 * 8 * 8, dtype=torch.int64).reshape(2, 3, 8, 8).to(torch.uint8)
    shuffled = PatchShuffled([{"image": image, "label": 0} for image in images], grid=4, seed=seed)
    expected = patch_shuffle(images[1:], 4, generator=_generator(seed * 1_000_003 + 1))[0]
    assert torch.equal(shuffled[1]["image"], expected)
