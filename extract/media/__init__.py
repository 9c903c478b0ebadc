"""Media decoding with PyAV: mono audio at the model rate and frames sampled by timestamp.

Times are seconds on the container's common timeline: 0 is the container's start, so audio
and frame times of one file can be compared directly even when the streams start apart.

Modules: ``spec`` (``DecodeSpec``, ``DecodeTuning``, ``DecodedMedia``, ``MediaError``), ``geometry``
(resize and centre crop), ``containers`` (opening, streams, timeline), ``audio`` (resampling,
``decode_audio``), ``frames`` (frame choice and conversion), ``decoding`` (``decode``), ``images``
(``load_image``, ``frame_at``). This package's namespace is their public API.
"""

from avfeat.extract.media.audio import AUDIO_GAP_FILL, MIN_AUDIO_SAMPLES, decode_audio
from avfeat.extract.media.decoding import THREADS_ENV, decode
from avfeat.extract.media.geometry import center_crop, resize_geometry, to_model_geometry
from avfeat.extract.media.images import frame_at, load_image
from avfeat.extract.media.spec import EXACT, KEYFRAMES, REFERENCE_TUNING, DecodedMedia, DecodeSpec, DecodeTuning, MediaError

__all__ = [
    "AUDIO_GAP_FILL", "EXACT", "KEYFRAMES", "MIN_AUDIO_SAMPLES", "REFERENCE_TUNING", "THREADS_ENV", "DecodeSpec",
    "DecodeTuning", "DecodedMedia", "MediaError", "center_crop", "decode", "decode_audio", "frame_at", "load_image",
    "resize_geometry", "to_model_geometry",
]
