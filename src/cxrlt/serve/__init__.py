"""Serve wing: the web page and its JSON API over a trained experiment (`predictor`, `app`).
Imports ground, data, models, evaluate."""
