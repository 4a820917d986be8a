"""Joint image + mask augmentation: per-sample (datasets/transforms.py) and batched (datasets/batch_augment.py)."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from scipy import stats

from datasets import batch_augment, transforms

RESOLUTION, TRAIN_SIZE = 32, 40
OFFSETS = TRAIN_SIZE - RESOLUTION + 1  # 9 possible crop offsets per axis

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
DEVICES = ["cpu", pytest.param("cuda", marks=needs_cuda)]


def _to_pixels(normalised):
    return (normalised + 1) * 127.5


# ----------------------------------------------------------------------------- recipe

def test_default_train_size_is_the_bit_ratio():
    assert transforms.default_train_size(128) == 160
    assert transforms.default_train_size(32) == 40
    assert transforms.TrainJointTransform(128).train_size == 160


def test_normalize_maps_uint8_to_unit_range():
    pixels = torch.tensor([0, 1, 127, 128, 255], dtype=torch.uint8)
    expected = np.array([0, 1, 127, 128, 255], dtype=np.float64) / 255 * 2 - 1  # (v/255 - 0.5) / 0.5
    out = transforms.normalize(pixels)
    assert out.dtype == torch.float32
    assert np.allclose(out.numpy(), expected, atol=1e-6)
    with pytest.raises(ValueError, match="uint8"):
        transforms.normalize(pixels.float())


def test_bad_inputs_are_rejected():
    with pytest.raises(ValueError, match="train_size"):
        transforms.TrainJointTransform(32, train_size=30)
    with pytest.raises(ValueError, match=r"image must be a uint8 tensor \[3,H,W\]"):
        transforms.TrainJointTransform(32)(torch.zeros(1, 32, 32, dtype=torch.uint8))
    with pytest.raises(ValueError, match="images must be a uint8"):
        batch_augment.train_augment(torch.zeros(2, 3, 8, 8), None, 8)
    with pytest.raises(ValueError, match="masks"):
        batch_augment.train_augment(torch.zeros(2, 3, 8, 8, dtype=torch.uint8),
                                    torch.zeros(3, 8, 8, dtype=torch.uint8), 8)


# ----------------------------------------------------------------------------- alignment

def _coordinate_images(batch, size, step):
    """uint8 [B,3,size,size]: channel 0 = step * row, channel 1 = step * column, channel 2 = sample id."""
    coords = torch.arange(size) * step
    image = torch.stack([coords[:, None].expand(size, size), coords[None, :].expand(size, size),
                         torch.zeros(size, size, dtype=torch.int64)])
    images = image.expand(batch, 3, size, size).clone()
    images[:, 2] = torch.arange(batch)[:, None, None]
    return images.to(torch.uint8)


def _coordinate_masks(batch, image_size, mask_size, axis):
    """uint8 [B,mask_size,mask_size]: the image row (axis 0) or column (axis 1) each mask pixel lies in."""
    index = torch.arange(mask_size) * image_size // mask_size  # consistent with nearest at pixel centres
    mask = index[:, None].expand(mask_size, mask_size) if axis == 0 else index[None, :].expand(mask_size, mask_size)
    return mask.expand(batch, mask_size, mask_size).to(torch.uint8).clone()


# Output pixel i of a resize samples the continuous source position v = (i + 0.5) * in / out:
# bilinear gives the image coordinate v - 0.5, nearest the pixel floor(v), so an aligned pair
# differs by at most 0.5 source pixels (+ uint8 rounding of step * coordinate). A crop or flip
# that drifts by one output pixel shifts this by 0.8 source pixels.
ALIGNED = 0.5 + 1.0 / 8


def _alignment_error(images_pixels, masks, axis, step):
    return (images_pixels[:, axis] / step - masks.double()).abs().max().item()


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("axis", [0, 1])
def test_batch_path_keeps_masks_aligned(axis, device):
    batch, image_size, mask_size, step = 64, 32, 128, 8
    images = _coordinate_images(batch, image_size, step).to(device)
    masks = _coordinate_masks(batch, image_size, mask_size, axis).to(device)
    generator = torch.Generator(device=device).manual_seed(0)
    out, out_masks = batch_augment.train_augment(images, masks, RESOLUTION, generator=generator)
    assert out.shape == (batch, 3, RESOLUTION, RESOLUTION) and out.dtype == torch.float32
    assert out_masks.shape == (batch, RESOLUTION, RESOLUTION) and out_masks.dtype == torch.uint8
    pixels = _to_pixels(out.double().cpu())
    assert _alignment_error(pixels, out_masks.cpu(), axis, step) <= ALIGNED
    assert torch.allclose(pixels[:, 2], torch.arange(batch, dtype=torch.double)[:, None, None])  # no mixing of samples


@pytest.mark.parametrize("axis", [0, 1])
def test_per_sample_path_keeps_masks_aligned(axis):
    image_size, mask_size, step = 32, 128, 8
    image = _coordinate_images(1, image_size, step)[0]
    mask = _coordinate_masks(1, image_size, mask_size, axis)[0]
    transform = transforms.TrainJointTransform(RESOLUTION)
    generator = torch.Generator().manual_seed(0)
    flips = 0
    for _ in range(40):
        out, out_mask = transform(image, mask, generator=generator)
        assert out.shape == (3, RESOLUTION, RESOLUTION) and out.dtype == torch.uint8
        assert out_mask.shape == (RESOLUTION, RESOLUTION) and out_mask.dtype == torch.uint8
        assert _alignment_error(out[None].double(), out_mask[None], axis, step) <= ALIGNED
        flips += int(out[1, 0, 0] > out[1, 0, -1])
    assert 0 < flips < 40  # both branches were exercised


def test_alignment_check_detects_a_one_pixel_drift():
    # The tolerance above must be tight enough to see a crop that is off by one pixel.
    images = _coordinate_images(1, 32, 8)
    masks = _coordinate_masks(1, 32, 128, axis=0)
    resized = batch_augment.resize_float(images, TRAIN_SIZE)
    resized_masks = batch_augment.resize_masks(masks, TRAIN_SIZE)
    assert _alignment_error(resized[:, :, :RESOLUTION], resized_masks[:, :RESOLUTION], 0, 8) <= ALIGNED
    assert _alignment_error(resized[:, :, 1:RESOLUTION + 1], resized_masks[:, :RESOLUTION], 0, 8) > ALIGNED


def test_masks_keep_their_values():
    masks = torch.randint(0, 4, (8, 128, 128), dtype=torch.uint8)
    masks[:, ::7] = 255
    images = torch.zeros(8, 3, 32, 32, dtype=torch.uint8)
    _, out = batch_augment.train_augment(images, masks, RESOLUTION, generator=torch.Generator().manual_seed(1))
    assert set(out.unique().tolist()) <= {0, 1, 2, 3, 255}
    _, out = transforms.TrainJointTransform(RESOLUTION)(images[0], masks[0])
    assert set(out.unique().tolist()) <= {0, 1, 2, 3, 255}


def test_crop_and_flip_equals_slicing():
    tensor = torch.randint(0, 256, (5, 3, TRAIN_SIZE, TRAIN_SIZE), dtype=torch.uint8)
    tops, lefts = torch.tensor([0, 8, 3, 8, 1]), torch.tensor([0, 8, 5, 0, 7])
    flips = torch.tensor([False, True, True, False, True])
    out = batch_augment.crop_and_flip(tensor, tops, lefts, flips, RESOLUTION)
    masks_out = batch_augment.crop_and_flip(tensor[:, 0], tops, lefts, flips, RESOLUTION)
    for b in range(5):
        expected = tensor[b, :, tops[b]:tops[b] + RESOLUTION, lefts[b]:lefts[b] + RESOLUTION]
        expected = expected.flip(-1) if flips[b] else expected
        assert torch.equal(out[b], expected)
        assert torch.equal(masks_out[b], expected[0])


# ----------------------------------------------------------------------------- distribution

def _crop_statistics_batch(samples):
    """Offsets and flips recovered from the outputs of coordinate images already at train_size."""
    step = 6
    images = _coordinate_images(samples, TRAIN_SIZE, step)
    out, _ = batch_augment.train_augment(images, None, RESOLUTION, generator=torch.Generator().manual_seed(2))
    pixels = _to_pixels(out.double()).round().long()
    return _decode_crops(pixels[:, 0, 0, 0], pixels[:, 1, 0, 0], pixels[:, 1, 0, -1], step)


def _crop_statistics_per_sample(samples):
    step = 6
    image = _coordinate_images(1, TRAIN_SIZE, step)[0]
    transform = transforms.TrainJointTransform(RESOLUTION)
    generator = torch.Generator().manual_seed(3)
    outs = torch.stack([transform(image, generator=generator)[0] for _ in range(samples)]).long()
    return _decode_crops(outs[:, 0, 0, 0], outs[:, 1, 0, 0], outs[:, 1, 0, -1], step)


def _decode_crops(first_row, first_column, last_column, step):
    tops = (first_row // step).numpy()
    flips = (first_column > last_column).numpy()
    lefts = (torch.minimum(first_column, last_column) // step).numpy()
    return tops, lefts, flips


@pytest.fixture(scope="module")
def crop_statistics():
    samples = 4000
    return {"batch": _crop_statistics_batch(samples), "per_sample": _crop_statistics_per_sample(samples)}


@pytest.mark.parametrize("path", ["batch", "per_sample"])
def test_crops_are_uniform_and_flips_fair(crop_statistics, path):
    tops, lefts, flips = crop_statistics[path]
    assert tops.min() == 0 and tops.max() == OFFSETS - 1 and lefts.min() == 0 and lefts.max() == OFFSETS - 1
    joint = np.bincount(tops * OFFSETS + lefts, minlength=OFFSETS ** 2)  # independent top and left
    assert stats.chisquare(joint).pvalue > 1e-3
    assert abs(flips.mean() - 0.5) < 0.03
    flip_by_left = np.array([np.bincount(lefts[flips == f], minlength=OFFSETS) for f in (False, True)])
    assert stats.chi2_contingency(flip_by_left).pvalue > 1e-3  # flip independent of the offset


def test_batch_and_per_sample_paths_agree(crop_statistics):
    for which in range(3):
        counts = [np.bincount(crop_statistics[path][which].astype(int), minlength=OFFSETS)
                  for path in ("batch", "per_sample")]
        table = np.array(counts)
        table = table[:, table.sum(0) > 0]
        assert stats.chi2_contingency(table).pvalue > 1e-3


def test_same_generator_seed_repeats_the_batch_augmentation():
    images = torch.randint(0, 256, (6, 3, 32, 32), dtype=torch.uint8)
    first, _ = batch_augment.train_augment(images, None, 32, generator=torch.Generator().manual_seed(5))
    again, _ = batch_augment.train_augment(images, None, 32, generator=torch.Generator().manual_seed(5))
    other, _ = batch_augment.train_augment(images, None, 32, generator=torch.Generator().manual_seed(6))
    assert torch.equal(first, again) and not torch.equal(first, other)


# ----------------------------------------------------------------------------- resizing

@pytest.mark.parametrize("native", [16, 24, 32, 64, 100])
def test_test_resize_matches_per_sample_and_pil(native):
    images = torch.randint(0, 256, (4, 3, native, native + 3), dtype=torch.uint8)
    batch = batch_augment.test_resize(images, RESOLUTION)
    per_sample = transforms.normalize(torch.stack([transforms._resize_image(im, RESOLUTION) for im in images]))
    assert batch.shape == (4, 3, RESOLUTION, RESOLUTION) and batch.dtype == torch.float32
    # per-sample output is rounded to uint8: half a level plus uint8 arithmetic
    assert (batch - per_sample).abs().max() <= 1.01 / 127.5
    # independent reference: PIL's bilinear resize (antialiased when downscaling)
    pil = np.stack([np.array(Image.fromarray(im.permute(1, 2, 0).numpy()).resize((RESOLUTION,) * 2, Image.BILINEAR))
                    for im in images]).transpose(0, 3, 1, 2)
    assert np.abs(_to_pixels(batch).numpy() - pil).max() <= 1.01


def test_train_resize_matches_per_sample_when_no_crop_is_left():
    images = torch.randint(0, 256, (3, 3, 50, 50), dtype=torch.uint8)
    out, _ = batch_augment.train_augment(images, None, 40, train_size=40, generator=torch.Generator().manual_seed(0))
    unflipped = [transforms._resize_image(im, 40).float() for im in images]
    for b in range(3):
        pixels = _to_pixels(out[b])
        error = min((pixels - unflipped[b]).abs().max(), (pixels - unflipped[b].flip(-1)).abs().max())
        assert error <= 1.01


# ----------------------------------------------------------------------------- mixup

def test_mixup_targets_and_images_follow_one_lambda():
    batch, classes = 8, 8
    x = torch.randn(batch, 3, 4, 4)
    labels = torch.arange(batch).flip(0)  # distinct, so a target row names the sample it was mixed with
    generator = torch.Generator().manual_seed(0)
    for _ in range(20):
        mixed, targets = batch_augment.mixup(x, labels, classes, alpha=0.4, generator=generator)
        assert targets.shape == (batch, classes)
        assert torch.allclose(targets.sum(1), torch.ones(batch))
        assert targets.min() >= 0 and targets.max() <= 1 + 1e-6
        for i in range(batch):
            weights = targets[i, labels]  # weight of sample j in row i
            assert torch.allclose(mixed[i], (weights[:, None, None, None] * x).sum(0), atol=1e-5)
        own = targets[torch.arange(batch), labels]
        partnered = own < 1
        assert torch.allclose(own[partnered], own[partnered][:1].expand(int(partnered.sum())))  # one lambda
        assert (targets > 0).sum(1).max() <= 2  # each sample mixed with at most one other


def test_mixup_accepts_one_hot_and_checks_labels():
    x = torch.randn(4, 3, 2, 2)
    one_hot = F.one_hot(torch.tensor([0, 1, 2, 1]), 3).float()
    generator = torch.Generator().manual_seed(1)
    _, from_one_hot = batch_augment.mixup(x, one_hot, 3, alpha=1.0, generator=generator)
    generator = torch.Generator().manual_seed(1)
    _, from_int = batch_augment.mixup(x, torch.tensor([0, 1, 2, 1]), 3, alpha=1.0, generator=generator)
    assert torch.allclose(from_one_hot, from_int)
    with pytest.raises(ValueError, match="labels"):
        batch_augment.mixup(x, torch.tensor([0, 1, 3, 1]), 3, alpha=1.0)
    with pytest.raises(ValueError, match="alpha"):
        batch_augment.mixup(x, torch.tensor([0, 1, 2, 1]), 3, alpha=0.0)


def test_mixup_of_rank_slices_equals_mixup_of_the_global_batch():
    # torchrun: each rank holds a slice of the global batch and sees the others through `gather`
    world, local, classes = 3, 4, 5
    x = torch.randn(world * local, 3, 2, 2)
    labels = torch.randint(0, classes, (world * local,))
    whole_x, whole_t = batch_augment.mixup(x, labels, classes, 0.7, generator=torch.Generator().manual_seed(9))
    for rank in range(world):
        mine = slice(rank * local, (rank + 1) * local)
        part_x, part_t = batch_augment.mixup(
            x[mine], labels[mine], classes, 0.7, generator=torch.Generator().manual_seed(9), rank=rank,
            gather=lambda t: torch.cat([t if r == rank else (x if t.dim() == 4 else
                                        F.one_hot(labels, classes).float())[r * local:(r + 1) * local]
                                        for r in range(world)]))
        torch.testing.assert_close(part_x, whole_x[mine])
        torch.testing.assert_close(part_t, whole_t[mine])


@pytest.mark.parametrize("alpha", [0.1, 1.0, 4.0])
def test_mixup_lambda_follows_beta(alpha):
    x = torch.zeros(2, 1)
    generator = torch.Generator().manual_seed(4)
    lambdas = []
    for _ in range(400):
        # with labels [0, 1], target[0] = (lam, 1 - lam) or (1, 0) when perm is the identity
        _, targets = batch_augment.mixup(x, torch.tensor([0, 1]), 2, alpha=alpha, generator=generator)
        if targets[1, 0] > 0 or targets[0, 1] > 0:
            lambdas.append(targets[0, 0].item())
    lambdas = np.array(lambdas)
    assert len(lambdas) > 100 and lambdas.min() >= 0 and lambdas.max() <= 1
    assert stats.kstest(lambdas, stats.beta(alpha, alpha).cdf).pvalue > 1e-3


# ----------------------------------------------------------------------------- patch shuffle

def _tiles(image, grid):
    c, h, w = image.shape
    th, tw = h // grid, w // grid
    return sorted(image[:, r * th:(r + 1) * th, k * tw:(k + 1) * tw].numpy().tobytes()
                  for r in range(grid) for k in range(grid))


@pytest.mark.parametrize("device", DEVICES)
def test_patch_shuffle_permutes_tiles_per_image(device):
    images = torch.randint(0, 256, (6, 3, 32, 24), dtype=torch.uint8)
    shuffled = batch_augment.patch_shuffle(images.to(device), grid=4,
                                           generator=torch.Generator(device=device).manual_seed(0)).cpu()
    assert shuffled.shape == images.shape and shuffled.dtype == torch.uint8
    for image, out in zip(images, shuffled):
        assert _tiles(image, 4) == _tiles(out, 4)
        assert not torch.equal(image, out)
    # independently per image: the same image twice gets two different arrangements
    twice = batch_augment.patch_shuffle(images[:1].repeat(2, 1, 1, 1), grid=4,
                                        generator=torch.Generator().manual_seed(1))
    assert not torch.equal(twice[0], twice[1])


def test_patch_shuffle_rejects_a_grid_that_does_not_divide():
    with pytest.raises(ValueError, match="grid"):
        batch_augment.patch_shuffle(torch.zeros(1, 3, 30, 32, dtype=torch.uint8), grid=4)


# ----------------------------------------------------------------------------- random scale + crop (--scale_range)

def _coordinate_batch(batch, size):
    """Images whose channels hold their own row index, column index and 255 (inside the image),
    and masks holding the row index: after any geometry, each output pixel says where it came from."""
    steps = torch.arange(size, dtype=torch.uint8)
    images = torch.stack([steps[:, None].expand(size, size), steps[None, :].expand(size, size),
                          torch.full((size, size), 255, dtype=torch.uint8)])
    return images.expand(batch, -1, -1, -1).clone(), steps[:, None].expand(batch, size, size).clone()


@pytest.mark.parametrize("device", DEVICES)
def test_scaled_crop_moves_image_and_mask_alike_pixel_for_pixel(device):
    images, row_masks = _coordinate_batch(64, TRAIN_SIZE)
    col_masks = row_masks.transpose(1, 2).contiguous()
    generator = torch.Generator().manual_seed(3)
    crops = batch_augment.sample_scaled_crops(64, TRAIN_SIZE, RESOLUTION, (0.5, 2.0), "cpu", generator)
    out, rows = batch_augment.train_augment(images.to(device), row_masks.to(device), RESOLUTION, TRAIN_SIZE,
                                            crops=crops, scale_range=(0.5, 2.0))
    _, cols = batch_augment.train_augment(images.to(device), col_masks.to(device), RESOLUTION, TRAIN_SIZE,
                                          crops=crops, scale_range=(0.5, 2.0))
    pixels, rows, cols = _to_pixels(out).cpu(), rows.cpu().float(), cols.cpu().float()
    # Channel 2 is 255 on the scaled image and 0 on its black padding (blended across the edge pixels)
    inside, outside = pixels[:, 2] > 254.9, pixels[:, 2] < 0.1
    assert ((rows != 255) & (cols != 255))[inside].all() and ((rows == 255) & (cols == 255))[outside].all()
    assert (inside | outside).float().mean() > 0.9 and outside.any()
    # Bilinear of a ramp = the exact source coordinate; nearest rounds it: at most half a pixel apart
    # (away from the last row / column, where the bilinear sample blends with the padding)
    interior = inside & (rows < TRAIN_SIZE - 1) & (cols < TRAIN_SIZE - 1)
    assert (pixels[:, 0] - rows)[interior].abs().max() <= 0.5 + 1e-3
    assert (pixels[:, 1] - cols)[interior].abs().max() <= 0.5 + 1e-3
    assert interior.float().mean() > 0.5


def test_scaled_crops_follow_the_scale_range_and_pad_small_images_centred():
    scales, tops, lefts, flips = batch_augment.sample_scaled_crops(4000, TRAIN_SIZE, RESOLUTION, (0.5, 1.5), "cpu",
                                                                   torch.Generator().manual_seed(0))
    assert scales.min() >= 0.5 and scales.max() <= 1.5
    assert stats.kstest(((scales - 0.5) / 1.0).numpy(), "uniform").pvalue > 1e-3
    room = scales * TRAIN_SIZE - RESOLUTION
    big = room >= 0
    assert ((tops[big] >= 0) & (tops[big] <= room[big]) & (lefts[big] >= 0) & (lefts[big] <= room[big])).all()
    assert torch.equal(tops[~big], room[~big] / 2) and torch.equal(lefts[~big], room[~big] / 2)
    assert 0.45 < flips.float().mean() < 0.55


def test_scaled_crop_at_scale_one_and_whole_pixel_offsets_is_the_plain_crop():
    images = torch.randint(0, 256, (3, 3, TRAIN_SIZE, TRAIN_SIZE), dtype=torch.uint8)
    masks = torch.randint(0, 10, (3, TRAIN_SIZE, TRAIN_SIZE), dtype=torch.uint8)
    tops, lefts, flips = torch.tensor([0, 3, 8]), torch.tensor([8, 1, 0]), torch.tensor([False, True, True])
    plain, plain_masks = batch_augment.train_augment(images, masks, RESOLUTION, TRAIN_SIZE, crops=(tops, lefts, flips))
    scaled, scaled_masks = batch_augment.train_augment(images, masks, RESOLUTION, TRAIN_SIZE, scale_range=(1, 1),
                                                       crops=(torch.ones(3, dtype=torch.float64), tops.double(),
                                                              lefts.double(), flips))
    torch.testing.assert_close(scaled, plain, atol=1e-4, rtol=0)
    assert torch.equal(scaled_masks, plain_masks)


def test_per_sample_scaled_crop_equals_the_batched_one():
    images = torch.randint(0, 256, (1, 3, 32, 32), dtype=torch.uint8)
    masks = torch.randint(0, 10, (1, 32, 32), dtype=torch.uint8)
    transform = transforms.TrainJointTransform(RESOLUTION, TRAIN_SIZE, scale_range=(0.5, 2.0))
    for seed in range(5):
        image, mask = transform(images[0], masks[0], generator=torch.Generator().manual_seed(seed))
        batched, batched_masks = batch_augment.train_augment(images, masks, RESOLUTION, TRAIN_SIZE,
                                                             generator=torch.Generator().manual_seed(seed),
                                                             scale_range=(0.5, 2.0))
        assert image.dtype == torch.uint8 and image.shape == (3, RESOLUTION, RESOLUTION)
        # the per-sample path resizes in uint8 (torchvision) and rounds: within two grey levels
        assert (image.float() - _to_pixels(batched[0])).abs().max() <= 2.0
        assert torch.equal(mask, batched_masks[0])


def test_scale_range_is_checked():
    with pytest.raises(ValueError, match="scale_range"):
        transforms.TrainJointTransform(RESOLUTION, scale_range=(2.0, 1.0))
    with pytest.raises(ValueError, match="scale_range"):
        batch_augment.train_augment(torch.zeros(1, 3, 8, 8, dtype=torch.uint8), None, 8, scale_range=(0, 1))
