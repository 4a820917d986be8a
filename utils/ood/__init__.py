"""The OOD method: the per-method scores on logits and features (scores), DFB's fusion of a
score x with the background score (fusion), the metrics (metrics) and the fitted detector that
score.py applies to new images (detector)."""
