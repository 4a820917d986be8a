"""Stages 1 and 3, train.py: the classifier and the dense (K+1)-class DFB network. ``main`` is
the driver (data, model, resume, outputs), ``engine`` the training loop, ``schedule`` the
learning-rate and mixup rule as pure functions, ``resume`` the checks that a resumed run is the
same run."""
