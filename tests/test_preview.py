"""`preview_grid` and `nc-tf preview`: GYM augmentation pictures."""

import numpy as np
import pytest
from PIL import Image

from mitigation.preview import load_images, preview_grid
from nc_tf.cli import main


def _images(n=3, size=28, channels=1, seed=0):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, size, size, channels), dtype=np.uint8)


def _cell(grid, row, col, cell, gap):
    top, left = row * (cell + gap), col * (cell + gap)
    return grid[top : top + cell, left : left + cell]


@pytest.mark.parametrize("size, channels, cell", [(28, 1, 84), (32, 3, 96)])
def test_png_has_the_grid_size_and_mode(tmp_path, size, channels, cell):
    path = tmp_path / "grid.png"
    images = _images(3, size, channels)
    grid = preview_grid(images, "lightweight", n_images=3, n_variants=2, path=path)
    with Image.open(path) as png:
        assert png.size == (3 * cell + 2 * 2, 3 * cell + 2 * 2)
        assert png.mode == ("L" if channels == 1 else "RGB")
        assert np.array_equal(np.asarray(png), grid)


def test_original_column_is_the_upscaled_input_and_variants_differ():
    images = _images(2, 32, 3)
    grid = preview_grid(images, "intensive", n_images=2, n_variants=3, gap=2)
    for row in range(2):
        upscaled = np.kron(images[row], np.ones((3, 3, 1), np.uint8))
        assert np.array_equal(_cell(grid, row, 0, 96, 2), upscaled)
        variants = [_cell(grid, row, col, 96, 2) for col in (1, 2, 3)]
        for variant in variants:
            assert not np.array_equal(variant, upscaled)
        assert not np.array_equal(variants[0], variants[1])


def test_same_seed_same_bytes(tmp_path):
    images = _images(2)
    paths = [tmp_path / name for name in ("a.png", "b.png", "c.png")]
    for path, seed in zip(paths, (5, 5, 6)):
        preview_grid(images, "lightweight", n_variants=2, seed=seed, path=path)
    a, b, c = (p.read_bytes() for p in paths)
    assert a == b
    assert a != c


def test_fewer_images_than_rows_and_bad_arguments():
    grid = preview_grid(_images(1), "lightweight", n_images=8, n_variants=1)
    assert grid.shape == (84, 2 * 84 + 2)
    with pytest.raises(ValueError, match="intensive"):
        preview_grid(_images(1), "heavy")
    with pytest.raises(ValueError, match="channels"):
        preview_grid(_images(1, channels=2))
    with pytest.raises(ValueError, match=".png"):
        preview_grid(_images(1), path="grid.jpg")


def test_cli_reads_an_image_file_and_refuses_to_overwrite(tmp_path, capsys):
    source = tmp_path / "sign.png"
    Image.fromarray(_images(1, 32, 3)[0]).save(source)
    assert load_images(source).shape == (1, 32, 32, 3)
    out = tmp_path / "grid.png"
    args = [
        "preview",
        "--pipeline",
        "lightweight",
        str(source),
        "--out",
        str(out),
        "--variants",
        "2",
    ]
    assert main(args) == 0
    with Image.open(out) as png:
        assert png.size == (3 * 96 + 2 * 2, 96)
    first = out.read_bytes()
    capsys.readouterr()

    assert main(args + ["--seed", "1"]) == 2
    assert "--force" in capsys.readouterr().err
    assert out.read_bytes() == first
    assert main(args + ["--seed", "1", "--force"]) == 0
    assert out.read_bytes() != first


def test_cli_takes_the_first_test_images_of_a_data_set(tmp_path):
    data = tmp_path / "data.npz"
    x = _images(5, 28, 1)
    np.savez(data, x_test=x, y_test=np.arange(5))
    out = tmp_path / "grid.png"
    assert (
        main(["preview", str(data), "--out", str(out), "--n-images", "2", "--variants", "1"]) == 0
    )
    with Image.open(out) as png:
        grid = np.asarray(png)
    assert grid.shape == (2 * 84 + 2, 2 * 84 + 2)
    upscaled = np.kron(x[1, ..., 0], np.ones((3, 3), np.uint8))
    assert np.array_equal(_cell(grid, 1, 0, 84, 2), upscaled)
