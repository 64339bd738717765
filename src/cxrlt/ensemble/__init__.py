"""Ensemble wing: blends (`blend`), thresholds and calibration (`thresholds`), leaderboard files
(`submission`), the closing summary (`summary`). Imports ground and evaluate."""
