"""Object bounding boxes of a split's images, for measuring whether CAMs find the object.

The file is a CSV with a header and the columns ``file,wnid,x0,y0,x1,y1`` (the format of the shared
archive ``tin_train.tar.gz`` and of ``prepare_data.py``'s Tiny ImageNet): ``file`` is the image's file
name or its path inside the data set (``train/<wnid>/<file>``; matched by the name alone, which is unique
in Tiny ImageNet), the corners are inclusive pixel coordinates in the image as stored. Other columns are
ignored.
"""
import csv
from pathlib import Path

from PIL import Image

BOX_COLUMNS = ("file", "x0", "y0", "x1", "y1")


def read_boxes(path):
    """{file name: (x0, y0, x1, y1)} of a box CSV; errors name the file, the line and what was expected."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"--boxes {path} does not exist")
    boxes = {}
    with open(path, newline="") as file:
        reader = csv.DictReader(file)
        missing = [column for column in BOX_COLUMNS if column not in (reader.fieldnames or [])]
        if missing:
            raise ValueError(f"{path}: no column(s) {missing} in its header; expected {','.join(BOX_COLUMNS)}")
        for line, row in enumerate(reader, start=2):
            try:
                x0, y0, x1, y1 = (int(row[column]) for column in BOX_COLUMNS[1:])
            except (TypeError, ValueError):
                raise ValueError(f"{path}, line {line}: expected integer corners x0,y0,x1,y1, got "
                                 f"{[row[column] for column in BOX_COLUMNS[1:]]}") from None
            if x1 < x0 or y1 < y0 or min(x0, y0) < 0:
                raise ValueError(f"{path}, line {line}: box ({x0}, {y0}, {x1}, {y1}) is not x0 <= x1, y0 <= y1, >= 0")
            name = Path(row["file"]).name
            if name in boxes:
                raise ValueError(f"{path}, line {line}: a second box for an image named {name}")
            boxes[name] = (x0, y0, x1, y1)
    if not boxes:
        raise ValueError(f"{path} holds no boxes")
    return boxes


def boxes_of_samples(samples, boxes):
    """For each (image path, label) of a split: (its box, its (width, height) as stored) or None when
    the box file has no row for it. Sizes come from the image headers."""
    found = []
    for image_path, _ in samples:
        box = boxes.get(Path(image_path).name)
        if box is None:
            found.append(None)
            continue
        with Image.open(image_path) as image:
            found.append((box, image.size))
    return found
