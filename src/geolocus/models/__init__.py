"""Trainable geo-localization models built from encoders: GeoCLIP, DualGeo, TransGeoCLIP."""
