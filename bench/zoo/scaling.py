"""How a zoo model expects its input scaled, and the scan-time intensity that matches it.

Each entry of `SCALINGS` gives the `intensity` a detector must be given
(`"raw"`: 0..255, `"mnist"`: x / 255, `"inception"`: (x / 255 - 0.5) * 2),
the function that scales raw images for training and evaluation, and whether
the model standardises its raw input itself with a first `Normalization` layer.
"""

import numpy as np

SCALINGS = {
    "raw": {"intensity": "raw", "scale": lambda x: x.astype(np.float32), "standardize": False},
    "unit": {
        "intensity": "mnist",
        "scale": lambda x: x.astype(np.float32) / 255.0,
        "standardize": False,
    },
    "signed": {
        "intensity": "inception",
        "scale": lambda x: (x.astype(np.float32) / 255.0 - 0.5) * 2.0,
        "standardize": False,
    },
    "standardize": {
        "intensity": "raw",
        "scale": lambda x: x.astype(np.float32),
        "standardize": True,
    },
}


def scale_input(x, scaling):
    """Scales raw uint8 images the way a model of `scaling` takes them.

    Args:
        x: uint8 images in 0..255.
        scaling: a key of `SCALINGS`.

    Returns:
        float32 images.
    """
    return SCALINGS[scaling]["scale"](x)
