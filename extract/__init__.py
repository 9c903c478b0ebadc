"""Stage 1: decode videos, run frozen backbones, write the token cache."""
