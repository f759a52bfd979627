"""Triggers: a mask and a pattern stamped onto raw images, serialisable as JSON.

A trigger follows the Neural Cleanse model `A(x, m, p) = (1 - m) * x + m * p`
in the raw [0, 255] pixel domain (`injection_func`, the reference name). A
`Trigger` keeps the JSON spec that made it, so any later command can rebuild
exactly the same trigger. Scans reverse triggers into this form, attacks
(`injection`) build them, and mitigation stamps them.
"""

import base64
import io

import numpy as np

from nc_tf.io import npy_header


def injection_func(mask, pattern, adv_img):
    """Stamps a trigger: `mask * pattern + (1 - mask) * adv_img` (reference)."""
    return mask * pattern + (1 - mask) * adv_img


class Trigger:
    """A mask/pattern trigger for one target label, rebuilt from a JSON spec.

    Build one from arrays, with `injection.square_trigger` and the other
    attack builders, or with `Trigger.from_spec`; apply it with `apply`.
    `spec` is a plain dict that `json.dumps` can write.

    Args:
        mask: `(H, W)` or `(H, W, 1|C)` array in [0, 1].
        pattern: `(H, W, C)` array in [0, 255].
        target: the label the trigger should produce.
        spec: the JSON-able description that rebuilds this trigger. Defaults
            to `None`: the arrays themselves are embedded.
        sources: for a partial (source-specific) backdoor, the source labels
            it applies to; other labels keep their label when stamped.
            Defaults to `None` (every label).
        delta: an additive `(H, W, C)` perturbation in raw units, added after
            the mask/pattern stamp and clipped to [0, 255] (invisible
            backdoors). Defaults to `None` (none).
        all_to_all: the number of classes K of an all-to-all attack: a
            stamped input of label i is sent to (i + 1) mod K, and `target`
            is `-1`. Defaults to `None` (one target).

    Example:

    >>> mask = np.zeros((28, 28)); mask[-5:-1, -5:-1] = 1
    >>> t = Trigger(mask, np.full((28, 28, 1), 255.0), target=7)
    >>> import json
    >>> Trigger.from_spec(json.loads(json.dumps(t.spec))).target
    7
    """

    def __init__(self, mask, pattern, target, spec=None, sources=None, delta=None, all_to_all=None):
        pattern = np.asarray(pattern, dtype=np.float32)
        mask = np.asarray(mask, dtype=np.float32)
        if mask.ndim == 2:
            mask = mask[..., None]
        if pattern.ndim != 3 or mask.shape[:2] != pattern.shape[:2]:
            raise ValueError(
                f"mask {mask.shape} and pattern {pattern.shape} must share H and "
                "W; pattern must be (H, W, C)."
            )
        if mask.min() < 0 or mask.max() > 1:
            raise ValueError("mask values must lie in [0, 1].")
        if pattern.min() < 0 or pattern.max() > 255:
            raise ValueError("pattern values must lie in the raw range [0, 255].")
        if delta is not None:
            delta = np.asarray(delta, dtype=np.float32)
            if delta.shape != pattern.shape or np.abs(delta).max() > 255:
                raise ValueError(
                    f"delta must be shaped like the pattern {pattern.shape} with "
                    f"values in [-255, 255]; got {delta.shape}."
                )
        if all_to_all is not None and (int(all_to_all) < 2 or sources is not None):
            raise ValueError("all_to_all takes the number of classes (>= 2) and excludes sources.")
        self.mask, self.pattern, self.delta = mask, pattern, delta
        self.all_to_all = None if all_to_all is None else int(all_to_all)
        self.target = -1 if self.all_to_all else int(target)
        self.sources = None if sources is None else sorted(int(v) for v in sources)
        self.spec = (
            dict(spec)
            if spec is not None
            else {
                "kind": "arrays",
                "target": self.target,
                "mask": encode_array(mask),
                "pattern": encode_array(pattern),
            }
        )
        if delta is not None and "delta" not in self.spec and self.spec["kind"] == "arrays":
            self.spec["delta"] = encode_array(delta)
        if self.sources is not None:
            self.spec["sources"] = self.sources
        if self.all_to_all is not None:
            self.spec["all_to_all"] = self.all_to_all

    def poison_labels(self, y):
        """The labels stamped inputs of labels `y` are meant to get.

        The target for a plain trigger; for a partial backdoor the target on
        its sources and the true label elsewhere; `(y + 1) mod K` all-to-all.

        Example:

        >>> Trigger(np.ones((2, 2)), np.zeros((2, 2, 1)), 7, sources=[3]).poison_labels([3, 4]).tolist()
        [7, 4]
        """
        y = np.asarray(y, dtype=np.int64)
        if self.all_to_all:
            return (y + 1) % self.all_to_all
        out = np.full_like(y, self.target)
        if self.sources is not None:
            out = np.where(np.isin(y, self.sources), out, y)
        return out

    def attack_samples(self, y):
        """Which inputs count for attack success: label changed by the attack.

        Example:

        >>> Trigger(np.ones((2, 2)), np.zeros((2, 2, 1)), 7, sources=[3, 7]).attack_samples([3, 4, 7]).tolist()
        [True, False, False]
        """
        y = np.asarray(y, dtype=np.int64)
        return self.poison_labels(y) != y

    @property
    def image_shape(self):
        return self.pattern.shape

    def apply(self, images):
        """Stamps the trigger onto raw images; keeps dtype (uint8 is rounded).

        Args:
            images: `(N, H, W, C)` or `(H, W, C)` raw images.

        Returns:
            stamped images of the same shape and dtype.
        """
        images = np.asarray(images)
        if images.shape[-3:] != self.pattern.shape:
            raise ValueError(
                f"Trigger is for images shaped {self.pattern.shape}, got {images.shape[-3:]}."
            )
        out = injection_func(self.mask, self.pattern, images.astype(np.float32))
        if self.delta is not None:
            out = out + self.delta
        # the blend of two raw images is raw up to float rounding; clipped so it stays raw
        out = np.clip(out, 0.0, 255.0)
        if images.dtype == np.uint8:
            return np.rint(out).astype(np.uint8)
        return out.astype(images.dtype)

    # Builders of the spec kinds other than "arrays", registered where those kinds are
    # defined (`injection.triggers`: square, shape, blend): kind -> spec -> Trigger.
    builders = {}

    @classmethod
    def from_spec(cls, spec):
        """Rebuilds a trigger from its spec (the inverse of `.spec`).

        Kinds other than `"arrays"` need the module that defines them
        (`import injection` for square, shape and blend).
        """
        kind = spec.get("kind")
        if kind == "arrays":
            delta = decode_array(spec["delta"]) if "delta" in spec else None
            return cls(
                decode_array(spec["mask"]),
                decode_array(spec["pattern"]),
                spec["target"],
                spec,
                spec.get("sources"),
                delta,
                spec.get("all_to_all"),
            )
        if kind not in cls.builders:
            known = ", ".join(sorted({"arrays", *cls.builders}))
            raise ValueError(
                f"Unknown trigger kind {kind!r} in spec; expected one of {known} "
                "(import injection for square, shape and blend)."
            )
        t = cls.builders[kind](spec)
        if spec.get("all_to_all"):
            t = t.to_all_to_all(spec["all_to_all"])
        t.spec.update({k: v for k, v in spec.items() if k not in t.spec})  # e.g. "attack"
        return t

    def to_all_to_all(self, num_classes):
        """The same stamp as an all-to-all attack: label i -> (i + 1) mod `num_classes`."""
        spec = {k: v for k, v in self.spec.items() if k != "sources"}
        spec["target"] = -1
        return Trigger(self.mask, self.pattern, -1, spec, None, self.delta, num_classes)

    def __repr__(self):
        target = "i+1" if self.all_to_all else self.target
        return f"Trigger(kind={self.spec.get('kind')!r}, target={target})"


def encode_array(a):
    """An array as base64 text of its `.npy` bytes (float32), for JSON specs."""
    buf = io.BytesIO()
    np.save(buf, np.asarray(a, dtype=np.float32), allow_pickle=False)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def decode_array(text):
    """The array of `encode_array` text (pickles refused).

    Raises:
        ValueError: not `.npy` text, or its header declares more values than
            the text could hold (checked before anything is allocated).
    """
    try:
        data = base64.b64decode(text, validate=True)
        shape, declared = npy_header(io.BytesIO(data))
    except Exception as error:  # binascii and numpy raise many types for bad text
        raise ValueError(f"a trigger array is not base64 .npy text ({error}).") from None
    if declared > len(data):
        raise ValueError(
            f"a trigger array declares shape {shape}, more than its {len(data)} bytes "
            "hold; the attack file was altered. Write it again with nc-tf inject."
        )
    return np.load(io.BytesIO(data), allow_pickle=False)
