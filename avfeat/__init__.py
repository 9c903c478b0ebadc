"""avfeat: aligned audio-visual token embeddings from video."""

__version__ = "0.1.0"
