"""Figures of the stages (score histograms, ROC curves, mask grids), below the stages and the run reports."""
