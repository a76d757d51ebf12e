"""Encoders: map one modality to vectors.

- :mod:`geolocus.encoders.image`: image backbones (embeddings and patch tokens);
- :mod:`geolocus.encoders.location`: GPS encoders (GeoCLIP's random Fourier
  features, TransGeoCLIP's Transformer with location attention).
"""
