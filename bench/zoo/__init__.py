"""A benchmark zoo of backdoored and clean MNIST and GTSRB classifiers built with plain Keras.

Build it with `python bench/zoo/build.py`; read it with `load_manifest`,
`model_path` and `load_trigger`.
"""

from .manifest import load_manifest, load_trigger, model_path, zoo_root
