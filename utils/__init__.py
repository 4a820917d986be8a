"""The code behind the four top-level scripts, in layers; a package imports only from the layers
below it (docs/ARCHITECTURE.md draws the tree):

- ``utils.cam``, ``utils.train``, ``utils.evaluate``: one package per stage, each a driver
  (``main.py``: reads the parsed flags, sets the run up, writes the outputs) and the pure or
  loop code it runs. A stage may use another stage's engine, never its driver.
- ``utils.ood``: the OOD method itself: the scores, DFB's fusion, the metrics, the fitted detector.
- ``utils.base``: helpers every layer (and ``datasets/``) may use: atomic files, devices and
  processes, checkpoints, the command-line wrapper.
"""
