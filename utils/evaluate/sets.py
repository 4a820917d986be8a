"""The sets of one evaluation (eval.py): the ID training, ID test and OOD splits under unique
names, with the sha256 of every image; for a dfb checkpoint also the held-out ID training images
that choose the DFB fusions and their validation OOD set (patch-shuffled copies of them, or
--fusion_val_ood). Every check on the sets is made here, before anything is extracted: unique
names, the class folders against the checkpoint, ID test images inside an OOD set (a warning),
and a --fusion_val_ood kept apart from every evaluated set."""
import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from datasets.batch_augment import patch_shuffle
from datasets.folder import dataset_name
from datasets.sources import open_split, relative_paths, restrict
from utils.base.checkpoint import file_digest
from utils.base.distributed import RunContext
from utils.base.runtime import mixed_seed

VALIDATION_OOD = "fusion_val_ood"  # patch-shuffled held-out ID images, or --fusion_val_ood
FUSION_ID = "fusion_id_heldout"
# Below this many held-out images found in --id_train_path (or --fusion_images, if smaller) the
# checkpoint's holdout is too small to choose sign and T on, and a seeded slice is used instead
MIN_HOLDOUT_IMAGES = 50


@dataclass
class EvalSets:
    """The sets of one evaluation, by name, and which ID training rows fit the scores."""
    id_train_name: str
    id_test_name: str
    ood_names: list[str]
    id_train: torch.utils.data.Dataset
    plan: list[tuple[str, torch.utils.data.Dataset]]  # every set to extract, in order (ID train, ID test, OOD...)
    digests: dict[str, list[str]]  # sha256 of every image of each set, in dataset order
    fit_rows: np.ndarray  # the rows of the ID training set that fit the scores
    selection_images: dict | None = None  # dfb: the held-out images that choose the fusions

    def shown_sets(self) -> list[tuple[str, torch.utils.data.Dataset]]:
        """The ID test and OOD sets (what figures/dense_maps.png shows)."""
        return [(name, dataset) for name, dataset in self.plan[1:] if name not in (FUSION_ID, VALIDATION_OOD)]


def open_sets(args, task: str, checkpoint: dict, resolution: int, num_classes: int, ctx: RunContext) -> EvalSets:
    """Every set eval.py extracts: the ID and OOD splits of the flags and, for a dfb checkpoint,
    the held-out images and validation OOD set that choose the fusions."""
    sets = open_test_sets(args, resolution, checkpoint, num_classes, ctx)
    if task == "dfb":
        add_fusion_sets(sets, args, checkpoint, resolution)
    return sets


def open_test_sets(args, resolution: int, checkpoint: dict, num_classes: int, ctx: RunContext) -> EvalSets:
    """The ID training, ID test and OOD splits under unique names; warns when an OOD set holds ID test images."""
    id_train_name = dataset_name(args.id_train_path, "id")
    id_test_name = dataset_name(args.id_test_path, "id")
    ood_names = [dataset_name(path, "ood") for path in args.ood_path]
    if len(set(ood_names)) != len(ood_names) or {id_train_name, id_test_name} & set(ood_names):
        raise ValueError(f"data set names must be unique, got ID {id_train_name}, {id_test_name} and OOD {ood_names}")
    skip = args.skip_corrupt
    id_train = open_split(args.id_train_path, resolution, classes=checkpoint["classes"] or None, skip_corrupt=skip)
    if len(id_train.classes) != num_classes:
        raise ValueError(f"--id_train_path {args.id_train_path} has {len(id_train.classes)} class folders but "
                         f"{args.model_path} classifies {num_classes} classes")
    id_test_dataset = open_split(args.id_test_path, resolution, classes=id_train.classes, skip_corrupt=skip)
    plan = [(id_train_name, id_train), (id_test_name, id_test_dataset)]
    plan += [(name, open_split(path, resolution, skip_corrupt=skip)) for name, path in zip(ood_names, args.ood_path)]
    digests = {name: image_digests(dataset) for name, dataset in plan}
    if ctx.is_main:
        warn_about_id_images_in_ood_sets(id_test_name, digests[id_test_name], {n: digests[n] for n in ood_names})
    return EvalSets(id_train_name, id_test_name, ood_names, id_train, plan, digests, np.arange(len(id_train)))


def add_fusion_sets(sets: EvalSets, args, checkpoint: dict, resolution: int) -> None:
    """dfb: the held-out ID training images that choose the fusions and the validation OOD set
    (their patch-shuffled copies, or --fusion_val_ood) join the plan; the held-out images leave
    the rows that fit the scores."""
    held_out, source = fusion_images(sets.id_train, checkpoint, args.fusion_images, args.seed)
    sets.fit_rows = np.setdiff1d(sets.fit_rows, held_out)  # the held-out images never fit a score
    heldout_dataset = restrict(sets.id_train, held_out)
    sets.digests[FUSION_ID] = [sets.digests[sets.id_train_name][i] for i in held_out]
    sets.plan.append((FUSION_ID, heldout_dataset))
    if args.fusion_val_ood:
        validation = open_split(args.fusion_val_ood, resolution, skip_corrupt=args.skip_corrupt)
        sets.digests[VALIDATION_OOD] = image_digests(validation)
        check_validation_ood(args.fusion_val_ood, args.ood_path, sets)
        sets.plan.append((VALIDATION_OOD, validation))
        validation_ood = {"source": "--fusion_val_ood", "path": str(args.fusion_val_ood), "count": len(validation),
                          "digest": dataset_digest(validation, sets.digests[VALIDATION_OOD])}
    else:
        sets.digests[VALIDATION_OOD] = sets.digests[FUSION_ID]
        sets.plan.append((VALIDATION_OOD, PatchShuffled(heldout_dataset, grid=args.shuffle_grid, seed=args.seed)))
        validation_ood = {"source": "patch-shuffled copies of the held-out ID images", "shuffle_grid": args.shuffle_grid,
                          "seed": args.seed}
    sets.selection_images = {"source": source, "split": str(sets.id_train.root), "count": len(held_out),
                             "fitted_images": len(sets.fit_rows), "shuffle_grid": args.shuffle_grid,
                             "seed": args.seed, "digest": dataset_digest(heldout_dataset, sets.digests[FUSION_ID]),
                             "images": relative_paths(heldout_dataset), "validation_ood": validation_ood}


def check_validation_ood(folder, ood_paths, sets: EvalSets) -> None:
    """--fusion_val_ood must be kept apart from the test sets: not one of the --ood_path folders,
    and no image byte-identical to one of theirs or of the ID test set."""
    resolved = Path(folder).resolve()
    for path in ood_paths:
        if Path(path).resolve() == resolved:
            raise ValueError(f"--fusion_val_ood {folder} is also an --ood_path: the fusions would be chosen on a "
                             f"test set; give a folder that is not evaluated (e.g. Tiny ImageNet val for CIFAR)")
    validation = set(sets.digests[VALIDATION_OOD])
    for name in [sets.id_test_name, *sets.ood_names]:
        shared = sum(digest in validation for digest in sets.digests[name])
        if shared:
            raise ValueError(f"--fusion_val_ood {folder} shares {shared} byte-identical images with the test set "
                             f"{name}: the validation OOD set must be kept apart from every evaluated set")


class PatchShuffled(torch.utils.data.Dataset):
    """ID images with their tiles permuted (a fixed permutation per image): objects are
    destroyed, colours and textures kept. Used only to choose the fusion's sign and T."""

    def __init__(self, dataset, grid=4, seed=0):
        self.dataset, self.grid, self.seed = dataset, grid, seed

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, index):
        item = dict(self.dataset[index])
        generator = torch.Generator().manual_seed(mixed_seed(self.seed, index))
        item["image"] = patch_shuffle(item["image"][None], self.grid, generator=generator)[0]
        return item


def image_digests(dataset):
    """sha256 of every image file of a split, in dataset order."""
    return [file_digest(path) for path, _ in dataset.samples]


def dataset_digest(dataset, digests):
    """sha256 over every image's relative path, label and bytes."""
    digest = hashlib.sha256()
    for (path, label), image_digest in zip(dataset.samples, digests):
        digest.update(f"{Path(path).relative_to(dataset.root)}|{label}|{image_digest}".encode())
    return digest.hexdigest()


def warn_about_id_images_in_ood_sets(id_test_name, id_digests, ood_digests):
    """An OOD set holding ID test images (e.g. the ID test folder given as --ood_path) gives
    meaningless numbers; say so loudly, without stopping the run."""
    id_images = set(id_digests)
    for name, digests in ood_digests.items():
        shared = sum(digest in id_images for digest in digests)
        if shared:
            print(f"[eval] WARNING: {shared} of {len(digests)} images of the OOD set {name} are byte-identical to "
                  f"images of the ID test set {id_test_name}" + (" (the same folder given twice?)"
                  if shared == len(digests) else "") + "; its OOD metrics are not meaningful")


def fusion_images(id_train, checkpoint, count, seed):
    """(sorted indices into id_train, source) of the held-out ID images that choose the fusions.

    The checkpoint's `holdout_samples` (relative paths the dfb network never trained on) that are
    present in id_train, at most `count` of them (a seeded subset beyond that); when it has none,
    or fewer than min(MIN_HOLDOUT_IMAGES, count) are found, `count` images drawn with `seed`, but at
    most half of the split, so that the fitted scores keep the other half.
    """
    rng = np.random.default_rng(seed)
    holdout = set(checkpoint.get("holdout_samples") or ())
    found = [index for index, path in enumerate(relative_paths(id_train)) if path in holdout]
    if len(found) >= min(MIN_HOLDOUT_IMAGES, count):
        chosen = found if len(found) <= count else rng.choice(found, size=count, replace=False)
        return sorted(int(i) for i in chosen), "checkpoint holdout_samples"
    if holdout:
        print(f"[eval] only {len(found)} of the checkpoint's {len(holdout)} held-out images are in "
              f"{id_train.root}; choosing the fusions on a seeded slice of it instead")
    size = min(count, len(id_train) // 2)
    if size < count:
        print(f"[eval] --fusion_images {count}: {id_train.root} has {len(id_train)} images; using {size}, "
              f"so that the other half fits the scores")
    if size < 1:
        raise ValueError(f"--id_train_path {id_train.root} has {len(id_train)} image(s): at least 2 are needed, "
                         f"one to fit the scores and one to choose the DFB fusions")
    return sorted(int(i) for i in rng.permutation(len(id_train))[:size]), "seeded slice of --id_train_path"
