"""Evaluation wing: stage 04's predictions and report (`predict`), prediction CSVs and study
aggregation (`predictions`), plots (`report`). Imports ground, data, models."""
