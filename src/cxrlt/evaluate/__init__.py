"""Evaluation wing: stage 04's predictions and report (`predict`), prediction CSVs, study
aggregation and gating (`predictions`), per-fold figures, drift and figures by view (`validation`),
label-free fold normalisation (`normalise`), the paired patient bootstrap (`bootstrap`), plots
(`report`). Imports ground, data, models, and train.epochs for the one best-epoch rule."""
