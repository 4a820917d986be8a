"""Tiny ImageNet's names, in one place. The project reads the set from two sources into two folders,
and the "val" split of each holds other images:

- the official release, tiny-imagenet-200.zip (``prepare_data.py --datasets TinyImageNet``,
  datasets/prepare.py): folder TIN_NAME, ``train/`` its 100,000 training images and ``val/`` its
  official validation split (10,000 other images, 50 per class, sorted into wnid folders);
- the shared archive of the train split alone, tin_train.tar(.gz) (``unpack_shared_data.py --tin``,
  datasets/shared_archives.py; the pretraining set of scripts/pretrain.sh): folder TIN_TRAIN_NAME,
  whose ``val/`` is no official split but the images of the train split held out for validation,
  those numbered i % TIN_HELDOUT_EVERY == 0 in each class (2 %), and ``train/`` the rest.

The shared archive also gives the OOD set TinyImageNet (``unpack_shared_data.py``; ``test/`` only): 10 images
of each class that is no CIFAR class (datasets/tin_cifar_overlap.py). Its folder has the official release's
name, TIN_NAME, but under unpack_shared_data.py's --out, not prepare_data.py's --root.
"""

TIN_NAME = "TinyImageNet"
TIN_TRAIN_NAME = "tin"
TIN_HELDOUT_EVERY = 50
# The columns of both sources' box files (train_boxes.csv, and val_boxes.csv of the official release)
TIN_BOX_HEADER = ("file", "wnid", "x0", "y0", "x1", "y1")
