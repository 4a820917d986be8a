"""The training loop's losses and its refusal to go on with a NaN loss."""
import pytest
import torch
import torch.nn.functional as F

from utils.engine_train import dense_loss, soft_cross_entropy, train_loop


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
        train_loop(net=net, optimizer=optimizer, batches=batches, schedule=[1, 2, 3, 4, 5], base_lr=0.1,
                   start_step=0, task="cls", num_classes=3, mixup_alpha=0.0, device=torch.device("cpu"),
                   amp="none", seed=0, rank=0, log_every=5, show_progress=False,
                   on_checkpoint=saved.append, checkpoint_every=1)
    assert saved == [1, 2]  # the step that produced NaN (done = 3) was never saved
