"""Offline training pipeline pieces: labelled samples for `ExportTrainingSet`."""
