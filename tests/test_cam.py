"""CAM post-processing against scipy.ndimage (the release's blur) / a one-image-at-a-time reference."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy.ndimage import gaussian_filter

from utils.cam.activation_maps import class_activations, cams_to_masks, gaussian_blur, multiscale_cam, pseudo_masks


@pytest.mark.parametrize("height, width, sigma", [(40, 48, 4.0), (128, 128, 4.0), (7, 5, 4.0), (1, 3, 4.0),
                                                   (16, 9, 2.5), (3, 3, 1.0)])
def test_blur_matches_scipy_gaussian_filter(height, width, sigma):
    """Same kernel and borders as scipy's defaults (mode 'reflect', truncate 4), also for maps
    smaller than the kernel (radius 16 at sigma 4), where the reflection repeats."""
    rng = np.random.default_rng(height * 100 + width)
    maps = rng.random((3, height, width)).astype(np.float32)
    ours = gaussian_blur(torch.from_numpy(maps), sigma=sigma).numpy()
    for ours_map, source in zip(ours, maps):
        reference = gaussian_filter(source.astype(np.float64), sigma=sigma)
        np.testing.assert_allclose(ours_map, reference, atol=1e-5, rtol=0)


def test_masks_match_reference_pipeline():
    rng = np.random.default_rng(1)
    cams = rng.random((4, 3, 32, 32)).astype(np.float32) ** 4
    cams[2] = 0.0  # a CAM that is zero everywhere: no foreground at all
    labels = np.array([0, 2, 1, 1])
    masks, _ = cams_to_masks(torch.from_numpy(cams), torch.from_numpy(labels), sigma=4.0, threshold=0.5)
    for i, label in enumerate(labels):
        cam = cams[i, label] / (cams[i, label].max() + 1e-5)
        cam = gaussian_filter(cam, sigma=4.0)
        cam -= cam.min()
        cam = cam / cam.max() if cam.max() != 0 else cam
        expected = np.where(cam > 0.5, label, 3).astype(np.uint8)
        assert (masks[i].numpy() == expected).mean() > 0.999  # float rounding at the threshold
    assert (masks[2] == 3).all()
    assert set(np.unique(masks.numpy())) <= {0, 1, 2, 3}


def test_batched_multiscale_cam_equals_one_image_at_a_time():
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(3, 5, 3, stride=4, padding=1)

    def cam_fn(x):
        return F.relu(conv(x))

    images = torch.randn(3, 3, 32, 32)
    scales = (1.0, 0.5, 1.5)
    batched, logits = multiscale_cam(conv, images, scales)
    torch.testing.assert_close(logits, conv(images).mean(dim=(2, 3)))
    for i in range(3):
        image = images[i:i + 1]
        expected = 0
        for s in scales:
            size = round(32 * s)
            x = image if s == 1 else F.interpolate(image, size=(size, size), mode="bicubic", align_corners=False)
            for flip in (False, True):
                inp = x.flip(-1) if flip else x
                cam = F.interpolate(cam_fn(inp), size=(32, 32), mode="bilinear", align_corners=False)
                expected = expected + (cam.flip(-1) if flip else cam)
        torch.testing.assert_close(batched[i:i + 1], expected, rtol=1e-5, atol=1e-5)


def test_flip_is_undone():
    """With a CAM that marks positive pixels, the mirrored pass must land back on the object:
    left half 2 (both passes), right half 0. Without undoing the flip both halves would get 1."""
    def positive_pixels(x):
        return (x[:, :1] > 0).float()

    images = -torch.ones(1, 3, 16, 16)
    images[..., :8] = 1.0
    total, _ = multiscale_cam(positive_pixels, images, scales=(1.0,))
    assert total[0, 0, :, :8].min() == 2 and total[0, 0, :, 8:].max() == 0


def test_pseudo_masks_use_the_label_only_when_given():
    class TwoColours(torch.nn.Module):
        """Class k lights up where channel k is positive, class 1 twice as strongly: it is
        always predicted."""
        def forward(self, x):
            return self.dense_logits(x).mean(dim=(2, 3))

        def dense_logits(self, x):
            return (x[:, :2] > 0).float() * torch.tensor([1.0, 2.0]).view(1, 2, 1, 1)

    images = torch.zeros(2, 3, 32, 32)
    images[:, 0, :, :16] = 1.0  # left half: class 0's colour
    images[:, 1, :, 16:] = 1.0  # right half: class 1's colour
    predicted_masks, predicted, _ = pseudo_masks(TwoColours(), images, scales=(1.0,), sigma=1.0)
    assert predicted.tolist() == [1, 1]
    assert (predicted_masks[:, :, 24:] == 1).all() and (predicted_masks[:, :, :8] == 2).all()
    labelled_masks, _, _ = pseudo_masks(TwoColours(), images, labels=torch.tensor([0, 1]), scales=(1.0,), sigma=1.0)
    assert (labelled_masks[0, :, :8] == 0).all() and (labelled_masks[0, :, 24:] == 2).all()
    assert (labelled_masks[1, :, 24:] == 1).all()


@pytest.mark.parametrize("scales", [(1.0, 0.5, 1.5), (0.5, 1.0), (0.5,)])
def test_choosing_the_channel_before_upsampling_changes_nothing(scales):
    """multiscale_cam with channels (given, or the predicted class) equals the full K-channel CAMs
    indexed afterwards, bit for bit, and pseudo_masks equals cams_to_masks of the full CAMs."""
    torch.manual_seed(0)
    weight = torch.randn(7, 3, 3, 3)

    def dense_fn(x):
        return F.conv2d(x, weight, padding=1)[..., ::2, ::2]

    images = torch.randn(4, 3, 20, 20)
    full, logits = multiscale_cam(dense_fn, images, scales)
    labels = torch.tensor([6, 0, 3, 3])
    given, _ = multiscale_cam(dense_fn, images, scales, channels=labels)
    assert torch.equal(given[:, 0], full[torch.arange(4), labels])
    predicted_logits = dense_fn(images).mean(dim=(2, 3))
    predicted = predicted_logits.argmax(1)
    chosen, chosen_logits = multiscale_cam(dense_fn, images, scales, channels="predicted")
    assert torch.equal(chosen[:, 0], full[torch.arange(4), predicted])
    torch.testing.assert_close(chosen_logits, predicted_logits)

    class Model:
        dense_logits = staticmethod(dense_fn)

        def __call__(self, x):
            return dense_fn(x).mean(dim=(2, 3))
    masks, classes, maps = pseudo_masks(Model(), images, scales=scales)
    expected_masks, expected_maps = cams_to_masks(full, predicted)
    assert torch.equal(classes, predicted) and torch.equal(masks, expected_masks) and torch.equal(maps, expected_maps)


@pytest.mark.parametrize("scales", [(1.0, 0.5), (0.5, 1.0), (0.5,)])
def test_raw_cam_is_the_networks_scale_1_map_of_the_chosen_class(scales):
    """keep_raw: the ReLU of the unflipped dense logits of the input as it is (scale 1, the network's own
    h x w), of the given, the predicted or every class; the multi-scale sum stays what it was, and the logits
    are the scale-1 ones also when the scales lack 1.0 (the pass the raw CAM adds)."""
    torch.manual_seed(0)
    weight = torch.randn(5, 3, 3, 3)

    def dense_fn(x):
        return F.conv2d(x, weight, padding=1)[..., ::4, ::4]

    images = torch.randn(3, 3, 16, 16)
    own = F.relu(dense_fn(images))  # [3, 5, 4, 4]
    predicted = dense_fn(images).mean(dim=(2, 3)).argmax(1)
    labels = torch.tensor([4, 0, 2])
    for channels, expected in ((None, own), (labels, own[torch.arange(3), labels][:, None]),
                               ("predicted", own[torch.arange(3), predicted][:, None])):
        total, logits, raw = multiscale_cam(dense_fn, images, scales, channels, keep_raw=True)
        plain_total, _ = multiscale_cam(dense_fn, images, scales, channels)
        torch.testing.assert_close(raw, expected)
        assert raw.shape[-2:] == (4, 4) and torch.equal(total, plain_total)
        torch.testing.assert_close(logits, dense_fn(images).mean(dim=(2, 3)))


def test_class_activations_hold_each_step_of_the_masks():
    """The multi-scale map before the blur, the blurred map and the masks are pseudo_masks' steps; the raw
    map is the chosen class's scale-1 CAM."""
    torch.manual_seed(1)
    weight = torch.randn(3, 3, 3, 3)

    class Model:
        @staticmethod
        def dense_logits(x):
            return F.conv2d(x, weight, padding=1)[..., ::2, ::2]

        def __call__(self, x):
            return self.dense_logits(x).mean(dim=(2, 3))

    images = torch.randn(2, 3, 12, 12)
    found = class_activations(Model(), images, scales=(1.0, 0.5), keep_raw=True)
    masks, predicted, blurred = pseudo_masks(Model(), images, scales=(1.0, 0.5))
    full, _ = multiscale_cam(Model.dense_logits, images, (1.0, 0.5))
    rows = torch.arange(2)
    assert torch.equal(found.masks, masks) and torch.equal(found.predicted, predicted)
    assert torch.equal(found.blurred, blurred) and torch.equal(found.multiscale, full[rows, predicted])
    torch.testing.assert_close(found.raw, F.relu(Model.dense_logits(images))[rows, predicted])
    assert class_activations(Model(), images, scales=(1.0,)).raw is None
