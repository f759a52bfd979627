"""Builds the benchmark zoo: backdoored and clean MNIST and GTSRB classifiers in plain Keras.

Trains every recipe of `bench/zoo/recipes.py` (MNIST first, then GTSRB),
measures clean accuracy and attack success rate on the test set, and writes
`ROOT/<dataset>/<name>/{model.h5|model.keras, meta.json, trigger.npz}`, then
`ROOT/manifest.json`. A model whose `meta.json` exists is skipped, so a rerun
resumes. ROOT defaults to `runs/zoo` (or `$NC_TF_ZOO_DIR`).

Usage: python bench/zoo/build.py [--only mnist|gtsrb] [--split dev|test]
    [--models name1,name2] [--root DIR]
"""

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
from bench.zoo.architectures import SPLITS  # noqa: E402
from bench.zoo.data import load_dataset  # noqa: E402
from bench.zoo.manifest import read_meta, write_manifest, zoo_root  # noqa: E402
from bench.zoo.recipes import RECIPES  # noqa: E402
from bench.zoo.table import print_counts, print_header, print_row  # noqa: E402
from bench.zoo.train import build_zoo_model  # noqa: E402

DATASETS = ("mnist", "gtsrb")


def _parse(argv):
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--only", choices=DATASETS, help="build one dataset's models")
    ap.add_argument("--split", choices=("dev", "test"), help="build one split's models")
    ap.add_argument("--models", help="comma-separated model names to build")
    ap.add_argument("--root", help="zoo folder (default: $NC_TF_ZOO_DIR or runs/zoo)")
    return ap.parse_args(argv)


def _selected(args):
    """The recipes the options select, in table order, MNIST first."""
    names = set(args.models.split(",")) if args.models else None
    unknown = (names or set()) - {r["name"] for r in RECIPES}
    if unknown:
        raise SystemExit(f"Unknown model name(s): {', '.join(sorted(unknown))}")
    chosen = [
        r
        for r in RECIPES
        if args.only in (None, r["dataset"])
        and args.split in (None, SPLITS[r["family"]])
        and (names is None or r["name"] in names)
    ]
    return sorted(chosen, key=lambda r: DATASETS.index(r["dataset"]))


def _with_twins(recipes, root):
    """Adds, before each fine-tuned recipe, its clean twin when that is not built yet."""
    by_name = {r["name"]: r for r in RECIPES}
    ordered, seen = [], set()
    for recipe in recipes:
        twin = recipe["finetuned_from"]
        built = twin is None or read_meta(recipe["dataset"], twin, root) is not None
        for r in ([] if built or twin in seen else [by_name[twin]]) + [recipe]:
            if r["name"] not in seen:
                ordered.append(r)
                seen.add(r["name"])
    return ordered


def main(argv=None):
    args = _parse(argv)
    root = zoo_root(args.root)
    recipes = _with_twins(_selected(args), root)
    print(f"zoo root: {root}; {len(recipes)} model(s) selected", flush=True)
    print_header()
    start, data, failed = time.time(), {}, []
    for recipe in recipes:
        meta = read_meta(recipe["dataset"], recipe["name"], root)
        if meta is not None:
            print_row(meta, resumed=True)
        else:
            if recipe["dataset"] not in data:
                data = {recipe["dataset"]: load_dataset(recipe["dataset"])}
            meta = build_zoo_model(recipe, data[recipe["dataset"]], root)
            print_row(meta)
        if meta["gate"] == "failed":
            failed.append(meta["name"])
    metas = write_manifest(root)
    print(f"\nmanifest: {os.path.join(root, 'manifest.json')} ({time.time() - start:.0f} s)")
    print_header()
    for meta in metas:
        print_row(meta)
    print_counts(metas)
    if failed:
        print(f"gate failed: {', '.join(failed)}")


if __name__ == "__main__":
    main()
