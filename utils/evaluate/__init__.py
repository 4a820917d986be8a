"""Stage 4, eval.py: logits, features and OOD scores of a checkpoint on the ID test set and the
OOD sets. ``main`` is the driver (fusion choice on held-out images, result files, detector),
``sets`` opens and checks the sets it evaluates, ``engine`` the batched forward pass, ``dense``
the dense-prediction metrics (mask accuracy and IoU, the centred-blob layout)."""
