"""A 3-channel model that reads [0, 1] inputs (`--intensity mnist`), through scan and mitigate.

Every other detection and mitigation test uses 1-channel raw-pixel MNIST;
this one checks that colour triggers and a non-raw intensity range reach the
end of the command line: the scan flags the target, and unlearning from the
scan's reversed trigger removes the backdoor.
"""

import json

import keras
import numpy as np
import pytest

from nc_tf.cli import main

TARGET = 7
RED = (255.0, 0.0, 0.0)


@pytest.fixture(scope="module")
def rgb_files(tmp_path_factory, mnist_small):
    """`(model.keras, data.npz, attack.json)` of a 3-channel MNIST model with a red-square backdoor."""
    from injection import inject_backdoor, square_trigger
    from nc_tf.models import mnist_model

    x, y, xt, yt = mnist_small
    x3, xt3 = np.repeat(x, 3, axis=-1), np.repeat(xt, 3, axis=-1)
    trigger = square_trigger(x3.shape[1:], target=TARGET, size=4, margin=1, color=RED)
    keras.utils.set_random_seed(3)
    model = mnist_model(input_shape=x3.shape[1:])
    inject_backdoor(
        model, x3, y, [trigger], ratio=0.25, epochs=3, intensity="mnist", seed=3, verbose=0
    )
    folder = tmp_path_factory.mktemp("rgb")
    model.save(folder / "model.keras")
    np.savez(
        folder / "data.npz",
        x_train=x3.astype(np.uint8),
        y_train=y,
        x_test=xt3.astype(np.uint8),
        y_test=yt,
    )
    (folder / "attack.json").write_text(
        json.dumps({"intensity": "mnist", "targets": [TARGET], "triggers": [trigger.spec]})
    )
    return folder / "model.keras", folder / "data.npz", folder / "attack.json"


def test_rgb_mnist_intensity_scan_flags_and_unlearn_removes(rgb_files, tmp_path, capsys):
    model, data, attack = rgb_files
    scan_dir, out = tmp_path / "scan", tmp_path / "fixed"
    common = f"--dataset {data} --intensity mnist --limit 500 --json".split()
    scan = f"scan {model} --steps 120 --starts 1 --out {scan_dir}".split()
    assert main(scan + common) == 0
    record = json.loads(capsys.readouterr().out)
    assert record["settings"]["intensity"] == "mnist"
    assert record["settings"]["image_shape"] == [28, 28, 3]
    assert [label for label, _ in record["outlier"]["flagged"]] == [TARGET]
    # the reversed pattern is a colour: red where the mask is, not grey
    with np.load(scan_dir / "reversed" / f"label_{TARGET}.npz") as z:
        mask, pattern = z["mask"], z["pattern"]
    inside = mask > 0.5 * mask.max()
    red, green = pattern[inside][:, 0].mean(), pattern[inside][:, 1].mean()
    assert red > green + 100

    unlearn = f"mitigate {model} --method unlearn --scan {scan_dir} --attack {attack}".split()
    options = f"--train-limit 3000 --data-ratio 1.0 --no-verify --out {out}".split()
    assert main(unlearn + options + common) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["before"]["asr_original"][0] > 0.9
    assert report["after"]["asr_original"][0] < 0.1
    assert report["after"]["accuracy"] >= report["before"]["accuracy"] - 0.05
