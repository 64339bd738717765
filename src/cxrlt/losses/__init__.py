"""Losses wing: one registry (`build_loss`), each loss a builder that checks its own keys. Imports only ground."""
