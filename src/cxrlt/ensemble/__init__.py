"""Ensemble wing: blends (`blend`), thresholds and calibration (`thresholds`), leaderboard files
(`submission`), their upload and the scores read back (`leaderboard`), the closing summary
(`summary`). Imports ground and evaluate."""
