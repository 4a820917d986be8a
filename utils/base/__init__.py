"""Base helpers: atomic file writes (io), seeds and autocast (runtime), devices and processes
(distributed), checkpoints (checkpoint), the one-line-error CLI wrapper (cli) and the flags that
define a run (run_flags). They import nothing of the project but ``models/``, so ``datasets/``
and every layer above can use them."""
