"""What every frozen backbone holds, audio or visual: its spec, the layer it reads, the model and
its processor, where and in which dtype it runs, and the model's size."""

from __future__ import annotations


class FrozenBackbone:
    """The common state of :class:`~avfeat.extract.models.audio.AudioBackbone` and
    :class:`~avfeat.extract.models.visual.VisualBackbone`."""

    def __init__(self, spec: str, model, processor, *, layer: int = -1, device="cpu", dtype: str = "float32", is_random: bool = False):
        import torch

        self.spec = spec
        self.layer = int(layer)
        self.is_random = bool(is_random)
        self.dtype = dtype
        self.device = torch.device(device)
        self.model = model
        self.processor = processor
        config = model.config
        self.model_type = str(config.model_type)
        self.num_layers = int(config.num_hidden_layers)
        self.dim = int(config.hidden_size)
