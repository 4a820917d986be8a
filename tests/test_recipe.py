"""The opt-in from-scratch recipe of train.py (cosine schedule, weight decay, Nesterov, label
smoothing), held-out validation images for both tasks, and a dense network started from the
classifier (--init_from) with an image-level loss."""
import json

import pytest
import torch

import train
from datasets.folder import decode_all
from datasets.sources import GlobalBatchIndices, InMemoryBatches, LoaderBatches, open_split
from datasets.synthetic import generate_benchmark
from models.resnetv2 import create_model
from utils.base.checkpoint import save_checkpoint
from utils.train.engine import DenseLogits
from utils.train.main import build_model, parameter_groups
from utils.train.resume import check_same_settings

TINY = ["--model", "ResNetV2-Tiny", "--resolution", "32", "--pretrained", "none", "--device", "cpu",
        "--workers", "0", "--batch", "8", "--eval_every", "0", "--save_every", "100"]
CLASSES = ["a", "b", "c"]


@pytest.fixture(scope="module")
def sets(tmp_path_factory):
    root = tmp_path_factory.mktemp("recipe")
    return generate_benchmark(root / "data", seed=2, size=32, n_train_per_class=8, n_test_per_class=2, n_ood=4,
                              progress=False)


def test_holdout_default_depends_on_the_task_and_bad_flags_are_refused(capsys):
    base = ["--datadir", "d", "--name", "n"]
    assert train.parse_args(["--task", "cls", *base]).holdout == 0.0
    assert train.parse_args(["--task", "dfb", *base]).holdout == 0.01
    assert train.parse_args(["--task", "cls", "--holdout", "0.1", *base]).holdout == 0.1
    for bad, message in ((["--task", "cls", "--init_from", "x"], "--task dfb"),
                         (["--task", "dfb", "--scale_range", "2", "1"], "--scale_range"),
                         (["--task", "cls", "--image_loss_weight", "1"], "--task dfb"),
                         (["--task", "cls", "--label_smoothing", "1"], "--label_smoothing"),
                         (["--task", "cls", "--weight_decay", "-1"], "--weight_decay"),
                         (["--task", "cls", "--warmup_steps", "-1"], "--warmup_steps")):
        with pytest.raises(SystemExit):
            train.parse_args(bad + base)
        assert message in capsys.readouterr().err


def test_weight_decay_reaches_convolution_weights_only():
    model = create_model("ResNetV2-Tiny", head_size=3, zero_head=False)
    decayed, rest = parameter_groups(model, 0.1)
    # independently: conv weights are the only parameters with more than one dimension
    names = {id(p): name for name, p in model.named_parameters()}
    assert {names[id(p)] for p in decayed["params"]} == {n for n, p in model.named_parameters() if p.dim() > 1}
    assert len(decayed["params"]) + len(rest["params"]) == len(list(model.parameters()))
    assert any(n.endswith("gn.weight") for n in (names[id(p)] for p in rest["params"]))
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    optimizer = torch.optim.SGD([decayed, rest], lr=0.5, momentum=0.9)
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    optimizer.step()
    for name, p in model.named_parameters():  # zero gradient: only the decay moves a weight, by lr * wd
        expected = before[name] * (1 - 0.5 * 0.1) if p.dim() > 1 else before[name]
        torch.testing.assert_close(p.detach(), expected, msg=name)
    assert len(parameter_groups(model, 0.0)) == 1


def save_classifier(path, model, classes=CLASSES, model_name="ResNetV2-Tiny", task="cls"):
    save_checkpoint(path, model_state=model.state_dict(), optim_state=None, step=1, args={}, task=task,
                    model_name=model_name, classes=classes, resolution=32)


def test_dense_network_from_the_classifier_starts_with_its_logits_and_a_zero_background(tmp_path):
    torch.manual_seed(0)
    classifier = create_model("ResNetV2-Tiny", head_size=3, zero_head=False).eval()
    save_classifier(tmp_path / "cls.pth.tar", classifier)
    args = train.parse_args(["--task", "dfb", "--datadir", "d", "--name", "n", "--init_from",
                             str(tmp_path / "cls.pth.tar"), *TINY])
    dense = build_model(args, 4, None, None, CLASSES).eval()
    images = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        _, pooled = DenseLogits(dense)(images)
        expected = classifier(images)
    torch.testing.assert_close(pooled[:, :3], expected, rtol=1e-5, atol=1e-5)
    assert torch.equal(pooled[:, 3], torch.zeros(4))

    for kwargs, message in (({"classes": ["a", "b", "z"]}, "classes"), ({"model_name": "BiT-M-R50x1"}, "BiT-M-R50x1"),
                            ({"task": "dfb"}, "'dfb' checkpoint")):
        save_classifier(tmp_path / "bad.pth.tar", classifier, **kwargs)
        bad = train.parse_args(["--task", "dfb", "--datadir", "d", "--name", "n", "--init_from",
                                str(tmp_path / "bad.pth.tar"), *TINY])
        with pytest.raises(ValueError, match=message):
            build_model(bad, 4, None, None, CLASSES)
    # a file that does not name its classes (the original release's): the head size is checked
    torch.save({"model": create_model("ResNetV2-Tiny", head_size=4).state_dict()}, tmp_path / "wide.pth.tar")
    wide = train.parse_args(["--task", "dfb", "--datadir", "d", "--name", "n", "--init_from",
                             str(tmp_path / "wide.pth.tar"), *TINY])
    with pytest.raises(ValueError, match="head of 4 classes; the dense network needs a classifier of its 3"):
        build_model(wide, 4, None, None, CLASSES)


def test_checkpoints_from_before_the_recipe_flags_still_resume():
    args = train.parse_args(["--task", "cls", "--datadir", "d", "--name", "n", *TINY])
    old = {k: v for k, v in vars(args).items()
           if k not in ("schedule", "warmup_steps", "weight_decay", "nesterov", "label_smoothing", "init_from",
                        "image_loss_weight")}
    old["holdout"] = 0.01  # what cls runs stored then, holding nothing out
    check_same_settings({"args": old}, args, train.RUN_DEFINING_FLAGS, "ckpt")
    args.weight_decay = 5e-4
    with pytest.raises(ValueError, match="--weight_decay 0.0 \\(now 0.0005\\)"):
        check_same_settings({"args": old}, args, train.RUN_DEFINING_FLAGS, "ckpt")


def test_recipe_runs_hold_out_images_and_report_val_top1(sets, tmp_path):
    train_dir = sets["id_train"]
    cls_metrics = train.run(train.parse_args([
        "--task", "cls", "--datadir", str(train_dir), "--logdir", str(tmp_path), "--name", "cls", "--steps", "6",
        "--holdout", "0.25", "--schedule", "cosine", "--warmup_steps", "2", "--weight_decay", "5e-4", "--nesterov",
        "--label_smoothing", "0.1", "--mixup", "0.2", "--export", str(tmp_path / "cls.pth.tar"), *TINY]))
    assert 0 <= cls_metrics["val_top1"] <= 1
    assert json.loads((tmp_path / "cls" / "final_metrics.json").read_text())["val_top1"] == cls_metrics["val_top1"]
    checkpoint = torch.load(tmp_path / "cls.pth.tar", weights_only=False)
    held_out = checkpoint["holdout_samples"]
    assert len(held_out) == 12 and len(set(held_out)) == 12  # round(48 * 0.25)
    assert all((train_dir / path).is_file() and "/" in path for path in held_out)
    assert len(checkpoint["optim"]["param_groups"]) == 2 and checkpoint["optim"]["param_groups"][0]["nesterov"]

    dfb_metrics = train.run(train.parse_args([
        "--task", "dfb", "--datadir", str(train_dir), "--mask_dir", str(train_dir.parent / "train_gtmask"),
        "--mask_format", "ours", "--logdir", str(tmp_path), "--name", "dfb", "--steps", "5", "--holdout", "0.1",
        "--seed", "1", "--init_from", str(tmp_path / "cls.pth.tar"), "--image_loss_weight", "0.5",
        "--scale_range", "0.5", "2.0", *TINY]))
    assert {"val_top1", "pixel_accuracy"} <= set(dfb_metrics)
    # another --holdout and --seed, yet the classifier's held-out images: neither network trained on them
    assert torch.load(tmp_path / "dfb" / "checkpoint.pth.tar", weights_only=False)["holdout_samples"] == held_out

    train.run(train.parse_args([
        "--task", "cls", "--datadir", str(train_dir), "--logdir", str(tmp_path), "--name", "cls_all", "--steps", "5",
        "--export", str(tmp_path / "cls_all.pth.tar"), *TINY]))
    train.run(train.parse_args([
        "--task", "dfb", "--datadir", str(train_dir), "--mask_dir", str(train_dir.parent / "train_gtmask"),
        "--mask_format", "ours", "--logdir", str(tmp_path), "--name", "dfb_all", "--steps", "5", "--holdout", "0.25",
        "--init_from", str(tmp_path / "cls_all.pth.tar"), *TINY]))
    own = torch.load(tmp_path / "dfb_all" / "checkpoint.pth.tar", weights_only=False)["holdout_samples"]
    assert len(own) == 12  # the classifier held nothing out: the dense run's own --holdout


def test_dense_run_refuses_a_classifier_whose_held_out_images_are_not_in_its_split(sets, tmp_path):
    train_dir = sets["id_train"]
    train.run(train.parse_args([
        "--task", "cls", "--datadir", str(train_dir), "--logdir", str(tmp_path), "--name", "cls", "--steps", "5",
        "--holdout", "0.25", "--export", str(tmp_path / "cls.pth.tar"), *TINY]))
    checkpoint = torch.load(tmp_path / "cls.pth.tar", weights_only=False)
    checkpoint["holdout_samples"] = checkpoint["holdout_samples"] + ["a/not_in_the_split.png"]
    torch.save(checkpoint, tmp_path / "cls.pth.tar")
    with pytest.raises(ValueError, match="only 12 are in --datadir"):
        train.run(train.parse_args([
            "--task", "dfb", "--datadir", str(train_dir), "--mask_dir", str(train_dir.parent / "train_gtmask"),
            "--mask_format", "ours", "--logdir", str(tmp_path), "--name", "dfb", "--steps", "5",
            "--init_from", str(tmp_path / "cls.pth.tar"), *TINY]))


def test_dense_batch_sources_deliver_the_image_labels(sets):
    # --image_loss_weight needs them: both sources, with masks, yield each image's folder label
    train_dir = sets["id_train"]
    dataset = open_split(train_dir, 32, with_masks=True, mask_root=train_dir.parent / "train_gtmask", num_classes=6)
    truth = torch.tensor([label for _, label in dataset.samples])
    device = torch.device("cpu")
    sources = (InMemoryBatches(decode_all(dataset, workers=0), GlobalBatchIndices(len(dataset), 8), 32, device),
               LoaderBatches(dataset, GlobalBatchIndices(len(dataset), 8), 32, device, workers=0),
               InMemoryBatches(decode_all(dataset, workers=0), GlobalBatchIndices(len(dataset), 8), 32, device,
                               scale_range=(0.5, 2.0)),
               LoaderBatches(dataset, GlobalBatchIndices(len(dataset), 8), 32, device, workers=0,
                             scale_range=(0.5, 2.0)))
    for source in sources:
        order = GlobalBatchIndices(len(dataset), 8)
        for (_, labels, masks), index in zip(source, order):
            assert masks is not None and torch.equal(labels.cpu(), truth[index])
            break
