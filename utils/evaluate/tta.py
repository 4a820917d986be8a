"""eval.py's --tta modes and what each averages, in one place for the engine, results.md and the report
(torch-free, so the report can import it)."""

# one forward per image, the mean over the image and its horizontal mirror, or airbench's multi-crop average
TTA_MODES = ("none", "flip", "flip_translate")

TTA_VIEWS = {"flip": "the logits and pooled features of each image are the mean over the image and its horizontal "
                     "mirror",
             "flip_translate": "the logits and pooled features of each image are airbench's six-view average: half "
                               "the flip average of the image, half the mean of the flip averages of its two 1 px "
                               "diagonal translations"}
