"""score.py's stage: a fitted detector applied to new image files (CSV and background maps)."""
