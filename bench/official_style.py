"""The baseline of the speed benchmark: the same work as our pipeline, done the way the
released DFB code does it.

- fp32 everywhere (no autocast);
- torchvision `ImageFolder`, images decoded by PIL and transformed one by one in DataLoader
  workers: train Resize((160, 160)) -> RandomCrop(128) -> RandomHorizontalFlip -> ToTensor ->
  Normalize(0.5, 0.5); test Resize((128, 128)) -> ToTensor -> Normalize (sizes follow the
  resolution: train size = resolution * 160 / 128);
- the network computed with the release's own modules (`release_model`): BiT's StdConv2d, which
  standardises each kernel with var_mean and four element-wise ops, and `nn.MaxPool2d`, wrapped
  in `torch.nn.DataParallel` on CUDA (plain module on the CPU);
- CAMs one image per iteration: a separate forward of the single image for every scale and
  for its flip (input rescaled bicubically), then that image's map post-processed on the CPU
  with numpy / scipy.ndimage.gaussian_filter, as the release's cam_to_mask.py does.

The released code has no dense (K+1) training step at all (README, "Differences from the original release"). The
dense row renders that step in the same style (PIL transform of image and mask together,
fp32, DataParallel, per-pixel cross-entropy), so both dense rows do the same work.
"""
import copy

import numpy as np
import torch
import torch.nn.functional as F
import torchvision.transforms as T
import torchvision.transforms.functional as TF
from PIL import Image
from scipy.ndimage import gaussian_filter
from torch import nn
from torch.utils.data import DataLoader, RandomSampler, Subset
from torchvision.datasets import ImageFolder

from datasets.masks import IGNORE_INDEX, mask_path
from datasets.transforms import default_train_size
from models.resnetv2 import WEIGHT_STD_EPS, StdConv2d
from utils.cam.activation_maps import DEFAULT_SCALES

HALF = (0.5, 0.5, 0.5)


# -- data -----------------------------------------------------------------------------------
def train_transform(resolution):
    train_size = default_train_size(resolution)
    return T.Compose([T.Resize((train_size, train_size)), T.RandomCrop(resolution),
                      T.RandomHorizontalFlip(), T.ToTensor(), T.Normalize(HALF, HALF)])


def test_transform(resolution):
    return T.Compose([T.Resize((resolution, resolution)), T.ToTensor(), T.Normalize(HALF, HALF)])


test_transform.__test__ = False  # not a pytest test despite its name


class JointTrainTransform:
    """(PIL image, PIL mask) -> (float [3,r,r], int64 [r,r]): the train transform above with the
    same resize (mask: nearest), crop and flip applied to the mask."""

    def __init__(self, resolution):
        self.resolution = resolution
        self.train_size = default_train_size(resolution)
        self.to_input = T.Compose([T.ToTensor(), T.Normalize(HALF, HALF)])

    def __call__(self, image, mask):
        size = [self.train_size, self.train_size]
        image = TF.resize(image, size, interpolation=T.InterpolationMode.BILINEAR)
        mask = TF.resize(mask, size, interpolation=T.InterpolationMode.NEAREST)
        top, left, height, width = T.RandomCrop.get_params(image, (self.resolution, self.resolution))
        image, mask = TF.crop(image, top, left, height, width), TF.crop(mask, top, left, height, width)
        if torch.rand(()) < 0.5:
            image, mask = TF.hflip(image), TF.hflip(mask)
        return self.to_input(image), torch.from_numpy(np.array(mask, dtype=np.uint8)).long()


class MaskedImageFolder(ImageFolder):
    """ImageFolder whose items are (image, mask, label); masks read from
    <mask_root>/<class>/<stem>.png."""

    def __init__(self, root, mask_root, joint_transform):
        super().__init__(root)
        self.mask_root, self.joint_transform = mask_root, joint_transform

    def __getitem__(self, index):
        path, label = self.samples[index]
        image = self.loader(path)
        with Image.open(mask_path(self.mask_root, path)) as mask:
            mask = mask.copy()
        image, mask = self.joint_transform(image, mask)
        return image, mask, label


def restrict_samples(dataset, samples):
    """Make an ImageFolder hold exactly `samples` [(path, label)], in that order."""
    dataset.samples = [(str(path), int(label)) for path, label in samples]
    dataset.imgs = dataset.samples
    dataset.targets = [label for _, label in dataset.samples]
    return dataset


def train_folder(root, samples, resolution):
    """The classifier's training set: (image, label) items through `train_transform`."""
    return restrict_samples(ImageFolder(root, train_transform(resolution)), samples)


def masked_train_folder(root, mask_root, samples, resolution):
    """The dense network's training set: (image, mask, label) items through `JointTrainTransform`."""
    return restrict_samples(MaskedImageFolder(root, mask_root, JointTrainTransform(resolution)), samples)


def test_folder(root, samples, resolution):
    """(image, label) items through `test_transform`."""
    return restrict_samples(ImageFolder(root, test_transform(resolution)), samples)


test_folder.__test__ = False  # not a pytest test despite its name


def shuffled_loader(dataset, batch, workers, num_batches, device, seed=0):
    """Random batches, drawn with replacement, enough for `num_batches` steps."""
    sampler = RandomSampler(dataset, replacement=True, num_samples=batch * num_batches,
                            generator=torch.Generator().manual_seed(seed))
    return DataLoader(dataset, batch_size=batch, sampler=sampler, num_workers=workers, drop_last=True,
                      pin_memory=device.type == "cuda")


def ordered_loader(dataset, positions, batch, workers, device):
    """Items `positions` of the dataset, in order."""
    return DataLoader(Subset(dataset, list(positions)), batch_size=batch, shuffle=False,
                      num_workers=workers, pin_memory=device.type == "cuda")


# -- networks -------------------------------------------------------------------------------
class ReleaseStdConv2d(StdConv2d):
    """BiT's StdConv2d as the release has it: the kernel standardised by var_mean over
    (in, kh, kw) and element-wise ops on every forward."""

    def forward(self, x):
        var, mean = torch.var_mean(self.weight, dim=[1, 2, 3], keepdim=True, unbiased=False)
        weight = (self.weight - mean) / torch.sqrt(var + WEIGHT_STD_EPS)
        return F.conv2d(x, weight, self.bias, self.stride, self.padding, self.dilation, self.groups)


def release_model(model):
    """A copy of our ResNetV2 that computes the same function with the release's modules:
    ReleaseStdConv2d for every convolution and nn.MaxPool2d(3, 2) as the root pool (ours uses a
    fused layer_norm and, on the CPU, an unfolded max; see models/resnetv2.py)."""
    model = copy.deepcopy(model)
    for module in model.modules():
        if isinstance(module, StdConv2d):
            module.__class__ = ReleaseStdConv2d
    model.root.pool = nn.MaxPool2d(kernel_size=3, stride=2)
    return model


class DenseForward(nn.Module):
    """Per-pixel logits at the input size as forward (what DataParallel scatters)."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x):
        return self.model.dense_logits(x, upsample=True)


class CamForward(nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x):
        return self.model.cam(x)


class FeatureForward(nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x):
        return self.model.forward_with_features(x)


def parallel(module, device):
    """DataParallel on the one benchmarked GPU, the module itself on the CPU."""
    if device.type != "cuda":
        return module
    index = device.index if device.index is not None else torch.cuda.current_device()
    return nn.DataParallel(module, device_ids=[index])


# -- the three loops ------------------------------------------------------------------------
def train_step(net, optimizer, images, targets, device):
    """One fp32 SGD step on cross-entropy: image labels [B] or per-pixel masks [B,H,W]
    (255 ignored). Returns the loss as a float (the released loop logs it every step)."""
    images = images.to(device, non_blocking=True)
    targets = targets.to(device, non_blocking=True)
    loss = F.cross_entropy(net(images), targets, ignore_index=IGNORE_INDEX)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    return loss.item()


def postprocess_cam(cam, class_index, num_classes, sigma=4.0, threshold=0.5):
    """One image's map [H, W] -> uint8 mask: divide by max + 1e-5, scipy Gaussian blur (sigma),
    minus the min, divided by the max unless 0; class_index where > threshold, else K."""
    cam = np.asarray(cam, dtype=np.float32)
    cam = cam / (cam.max() + 1e-5)
    cam = gaussian_filter(cam, sigma=sigma)
    cam -= cam.min()
    if cam.max() != 0:
        cam /= cam.max()
    return np.where(cam > threshold, class_index, num_classes).astype(np.uint8)


@torch.no_grad()
def cam_one_image(classify_net, cam_net, image, num_classes, scales=DEFAULT_SCALES, sigma=4.0,
                  threshold=0.5):
    """image: normalised float [1,3,H,W] on the device -> (uint8 mask [H,W], predicted class).

    One forward for the prediction, then two single-image forwards per scale (the image and
    its mirror), each map upsampled bilinearly to H x W (the mirror flipped back) and added.
    """
    height, width = image.shape[-2:]
    class_index = int(classify_net(image).argmax(1).item())
    total = None
    for scale in scales:
        size = (max(1, round(height * scale)), max(1, round(width * scale)))
        scaled = image if size == (height, width) else F.interpolate(image, size=size, mode="bicubic",
                                                                     align_corners=False)
        for mirrored in (False, True):
            cam = cam_net(scaled.flip(-1) if mirrored else scaled)
            cam = F.interpolate(cam, size=(height, width), mode="bilinear", align_corners=False)
            cam = cam.flip(-1) if mirrored else cam
            total = cam if total is None else total + cam
    mask = postprocess_cam(total[0, class_index].cpu().numpy(), class_index, num_classes, sigma, threshold)
    return mask, class_index


@torch.no_grad()
def extract_batch(feature_net, images, device):
    """(logits, pooled features) of one batch as float32 numpy arrays, moved off the device
    batch by batch as the released evaluation does."""
    logits, features = feature_net(images.to(device, non_blocking=True))
    return logits.cpu().numpy(), features.cpu().numpy()
