"""The training loop's losses and its refusal to go on with a NaN loss."""
import pytest
import torch
import torch.nn.functional as F

from models.resnetv2 import create_model
from utils.base.distributed import RunContext
from utils.train.engine import (DenseLogits, TrainLoopConfig, dense_loss, dense_step, smooth_targets,
                                soft_cross_entropy, train_loop)


def test_dense_loss_ignores_255_and_survives_an_unlabelled_batch():
    logits = torch.randn(2, 4, 5, 5, requires_grad=True)
    masks = torch.randint(0, 4, (2, 5, 5), dtype=torch.uint8)
    masks[0, :2] = 255
    valid = masks != 255
    expected = F.cross_entropy(logits.permute(0, 2, 3, 1)[valid], masks[valid].long())
    torch.testing.assert_close(dense_loss(logits, masks), expected)
    empty = dense_loss(logits, torch.full_like(masks, 255))
    assert empty.item() == 0.0
    empty.backward()  # still differentiable: a batch without labels is a no-op, not a NaN


def test_soft_cross_entropy_equals_hard_cross_entropy_on_one_hot_targets():
    logits = torch.randn(6, 3)
    labels = torch.tensor([0, 2, 1, 1, 0, 2])
    torch.testing.assert_close(soft_cross_entropy(logits, F.one_hot(labels, 3).float()),
                               F.cross_entropy(logits, labels))


def test_nan_loss_names_its_step_and_no_checkpoint_holds_its_weights():
    net = torch.nn.Linear(4, 3)
    good = (torch.randn(2, 4), torch.tensor([0, 1]), None)
    poisoned = (torch.full((2, 4), float("nan")), torch.tensor([0, 1]), None)
    batches = iter([good, good, poisoned, good, good])
    optimizer = torch.optim.SGD(net.parameters(), lr=0.1)
    saved = []
    with pytest.raises(FloatingPointError, match=r"loss is nan at step 2; .*last checkpoint \(step 2\).*--base_lr"):
        train_loop(TrainLoopConfig(task="cls", num_classes=3, schedule=[1, 2, 3, 4, 5], base_lr=0.1, start_step=0,
                                   mixup_alpha=0.0, seed=0, checkpoint_every=1, log_every=5),
                   RunContext(device=torch.device("cpu"), rank=0, world_size=1, amp="none", is_main=True),
                   net=net, optimizer=optimizer, batches=batches, show_progress=False, on_checkpoint=saved.append)
    assert saved == [1, 2]  # the step that produced NaN (done = 3) was never saved


def test_label_smoothing_of_soft_targets_matches_torch_on_hard_labels():
    logits = torch.randn(5, 4)
    labels = torch.tensor([0, 3, 1, 2, 2])
    torch.testing.assert_close(soft_cross_entropy(logits, smooth_targets(F.one_hot(labels, 4).float(), 0.1)),
                               F.cross_entropy(logits, labels, label_smoothing=0.1))
    # by hand: the true class gets 1 - e + e/K, the others e/K
    by_hand = smooth_targets(F.one_hot(torch.tensor([1]), 4).float(), 0.2)
    torch.testing.assert_close(by_hand, torch.tensor([[0.05, 0.85, 0.05, 0.05]]))



def test_dense_network_pools_to_the_classifier_forward_and_adds_the_image_loss():
    torch.manual_seed(0)
    model = create_model("ResNetV2-Tiny", head_size=4, zero_head=False).eval()
    images = torch.randn(3, 3, 32, 32)
    dense, pooled = DenseLogits(model)(images)
    torch.testing.assert_close(pooled, model(images), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(dense, model.dense_logits(images, upsample=True))
    masks = torch.randint(0, 4, (3, 32, 32), dtype=torch.uint8)
    labels = torch.tensor([0, 2, 1])
    net = DenseLogits(model)
    plain, stats = dense_step(net, images, masks, labels, 3)
    with_image, _ = dense_step(net, images, masks, labels, 3, image_loss_weight=0.5, label_smoothing=0.1)
    expected = F.cross_entropy(model(images)[:, :3], labels, label_smoothing=0.1)
    torch.testing.assert_close(with_image - plain, 0.5 * expected, rtol=1e-4, atol=1e-5)
    assert stats["accuracy"] == (model(images)[:, :3].argmax(1) == labels).float().mean()
    expected_pixels = (model.dense_logits(images, upsample=True).argmax(1) == masks).float().mean()
    torch.testing.assert_close(stats["pixel_accuracy"], expected_pixels)
    _, unlogged = dense_step(net, images, masks, labels, 3, pixel_accuracy=False)  # steps the loop does not log
    assert set(unlogged) == {"accuracy"}
    with pytest.raises(ValueError, match="labels"):
        dense_step(net, images, masks, image_loss_weight=0.5)


def test_the_loop_logs_the_dense_pixel_accuracy_on_its_logged_steps():
    class Writer:
        def __init__(self):
            self.scalars = []

        def add_scalar(self, tag, value, step):
            self.scalars.append((tag, step))

    torch.manual_seed(0)
    model = create_model("ResNetV2-Tiny", head_size=4, zero_head=False)
    batch = (torch.randn(2, 3, 32, 32), torch.tensor([0, 2]), torch.randint(0, 4, (2, 32, 32), dtype=torch.uint8))
    writer = Writer()
    train_loop(TrainLoopConfig(task="dfb", num_classes=3, schedule=[1, 2, 3, 4, 5], base_lr=0.01, start_step=0,
                               mixup_alpha=0.0, seed=0, log_every=2),
               RunContext(device=torch.device("cpu"), rank=0, world_size=1, amp="none", is_main=True),
               net=DenseLogits(model), optimizer=torch.optim.SGD(model.parameters(), lr=0.01),
               batches=iter([batch] * 5), writer=writer, show_progress=False)
    assert [step for tag, step in writer.scalars if tag == "train/pixel_accuracy"] == [2, 4, 5]
