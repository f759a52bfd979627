"""`nc-tf report`: one self-contained HTML page per model, for every kind of folder.

The pages are parsed with `html.parser`: each folder kind has its sections,
every image is an inline PNG that decodes, nothing refers to the network,
and a missing optional input (--attack, --clean-model) is a notice, not an
error.
"""

import base64
import json
import shutil
import types
from html.parser import HTMLParser
from io import BytesIO

import pytest
from PIL import Image

from mitigation.report import N_EXAMPLES, SECTIONS, write_report
from nc_tf.cli import main

MAX_BYTES = 3_000_000  # "a few MB at most", here for a handful of labels


class Page(HTMLParser):
    """What a test reads from a report: folders and their sections, images, links, notices."""

    def __init__(self, text):
        super().__init__()
        self.folders, self.images, self.refs, self.tags = [], [], [], set()
        self.banner, self.headline, self.notices = False, "", []
        self.section, self._in, self._text = None, None, ""
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        self.tags.add(tag)
        self.refs += [a[k] for k in ("src", "href", "action", "srcset") if a.get(k)]
        if a.get("data-section") == "banner":
            self.banner = True
        elif tag == "section" and "data-kind" in a:
            self.folders.append({"kind": a["data-kind"], "sections": {}})
            self.section = None
        elif tag == "section" and "data-section" in a:
            self.section = {"images": [], "notices": []}
            self.folders[-1]["sections"][a["data-section"]] = self.section
        if tag == "img":
            self.images.append(a.get("src", ""))
            if self.section is not None:
                self.section["images"].append(a.get("src", ""))
        if tag == "h1" or (tag == "p" and "notice" in (a.get("class") or "").split()):
            self._in, self._text = tag, ""

    def handle_endtag(self, tag):
        if tag == self._in == "h1":
            self.headline = self._text
        elif tag == self._in == "p":
            self.notices.append(self._text)
            if self.section is not None:
                self.section["notices"].append(self._text)
        if tag == self._in:
            self._in = None

    def handle_data(self, data):
        if self._in:
            self._text += data


def _decode(uri):
    assert uri.startswith("data:image/png;base64,"), uri[:40]
    image = Image.open(BytesIO(base64.b64decode(uri.split(",", 1)[1], validate=True)))
    image.load()
    return image


@pytest.fixture(scope="module")
def made(tmp_path_factory, tiny_backdoored, tiny_scan, mnist_small):
    """A model file, its attack, a vanilla model and one folder of every kind."""
    import keras

    from nc_tf.gangsweep import gangsweep_scan
    from nc_tf.models import mnist_model
    from nc_tf.partial import partial_scan

    root = tmp_path_factory.mktemp("report")
    model, trigger, _ = tiny_backdoored
    model.save(root / "model.keras")
    (root / "attack.json").write_text(
        json.dumps({"intensity": "raw", "targets": [7], "triggers": [trigger.spec]})
    )
    keras.utils.set_random_seed(3)
    mnist_model().save(root / "clean.keras")
    _, _, xt, yt = mnist_small
    quiet = dict(progress=False, verbose=False)
    partial_scan(
        model,
        xt[:400],
        yt[:400],
        targets=[7, 9],
        sources=[0, 1],
        out_dir=str(root / "partial"),
        steps=20,
        **quiet,
    )
    gangsweep_scan(
        model,
        xt[:100],
        yt[:100],
        labels=[0, 7, 9],
        out_dir=str(root / "gangsweep"),
        epochs=1,
        filters=4,
        residual_blocks=1,
        min_steps_per_epoch=4,
        **quiet,
    )
    flip = [
        "mitigate",
        str(root / "model.keras"),
        "--method",
        "flip",
        "--dataset",
        "mnist",
        "--train-limit",
        "300",
        "--limit",
        "200",
        "--attack",
        str(root / "attack.json"),
        "--out",
        str(root / "flip"),
    ]
    assert main(flip) == 0
    return types.SimpleNamespace(
        root=root,
        model=str(root / "model.keras"),
        attack=str(root / "attack.json"),
        clean=str(root / "clean.keras"),
        dirs=[tiny_scan[1], str(root / "partial"), str(root / "gangsweep"), str(root / "flip")],
        data=["--dataset", "mnist", "--limit", "300"],
    )


@pytest.fixture(scope="module")
def full(made):
    """The page of every folder kind, with the attack and a vanilla model."""
    out = made.root / "full.html"
    options = ["--attack", made.attack, "--clean-model", made.clean, "--out", str(out)]
    assert main(["report", *made.dirs, "--model", made.model, *made.data, *options]) == 0
    return out.read_text(encoding="utf-8")


@pytest.fixture(scope="module")
def bare(made):
    """The page of the Neural Cleanse folder alone, without --attack or --clean-model."""
    out = made.root / "bare.html"
    args = ["report", made.dirs[0], "--model", made.model, *made.data, "--out", str(out)]
    assert main([*args, "--json"]) == 0
    return out.read_text(encoding="utf-8")


def test_every_folder_kind_has_its_sections(full):
    page = Page(full)
    assert page.banner and "Backdoor detected" in page.headline and "label 7" in page.headline
    kinds = [folder["kind"] for folder in page.folders]
    assert kinds == ["neural-cleanse", "partial", "gangsweep", "mitigation"]
    for folder in page.folders:
        expected = [s for s in SECTIONS[folder["kind"]] if s != "gym-columns"]  # gym only
        assert list(folder["sections"]) == expected, folder["kind"]


def test_every_image_decodes_and_nothing_is_remote(full):
    page = Page(full)
    assert len(page.images) > 50
    sizes = [_decode(uri).size for uri in page.images]
    assert max(max(size) for size in sizes) <= 1000  # downscaled
    assert all(ref.startswith(("data:image/png;base64,", "#")) for ref in page.refs)
    assert not page.tags & {"script", "link", "iframe", "object", "embed", "base"}
    text = full.replace("http-equiv", "")
    assert "http://" not in text and "https://" not in text and "@import" not in text
    assert len(full.encode()) < MAX_BYTES


def test_the_grad_cam_grid_grows_with_the_attack_and_the_vanilla_model(full, bare):
    with_all = Page(full).folders[0]["sections"]["grad-cam"]
    alone = Page(bare).folders[0]["sections"]["grad-cam"]
    assert with_all["notices"] == []
    assert len(with_all["images"]) == len(alone["images"]) == N_EXAMPLES
    big, small = _decode(with_all["images"][0]).size, _decode(alone["images"][0]).size
    assert big[0] > 1.5 * small[0]  # 4 inputs instead of clean and reversed
    assert big[1] > 1.5 * small[1]  # backdoored and vanilla rows
    assert len(Page(full).folders[0]["sections"]["activations"]["images"]) == 2


def test_missing_optional_inputs_are_notices_not_errors(bare):
    page = Page(bare)
    assert [f["kind"] for f in page.folders] == ["neural-cleanse"]
    notices = " ".join(page.folders[0]["sections"]["grad-cam"]["notices"])
    assert "No --attack given" in notices and "No --clean-model given" in notices
    assert all(_decode(uri) for uri in page.images)


def test_json_summary_names_the_page_and_the_flagged_labels(made, capsys):
    out = made.root / "summary.html"
    args = ["report", made.dirs[3], "--model", made.model, *made.data, "--out", str(out)]
    assert main([*args, "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["report"] == str(out) and summary["bytes"] == out.stat().st_size
    assert summary["folders"] == [{"dir": made.dirs[3], "kind": "mitigation", "flagged": []}]


def test_gym_columns_curves_and_escaping(made, tiny_backdoored, mnist_small, tmp_path):
    folder = tmp_path / "gym <b>&"
    shutil.copytree(made.dirs[3], folder)
    record = json.loads((folder / "mitigation.json").read_text())
    columns = {k: record["after"] for k in ("intensive_only", "finetuned_intensive")}
    columns["finetuned_lightweight"] = record["after"]
    record.update(method="gym", details={"columns": columns, "n_samples": 200})
    (folder / "mitigation.json").write_text(json.dumps(record))
    Image.new("RGB", (900, 600), "white").save(folder / "pruning.png")
    _, _, xt, yt = mnist_small
    out = tmp_path / "gym.html"
    write_report([str(folder)], tiny_backdoored[0], xt[:200], yt[:200], str(out))
    text = out.read_text(encoding="utf-8")
    page = Page(text)
    sections = page.folders[0]["sections"]
    assert list(sections) == list(SECTIONS["mitigation"])
    assert [_decode(uri).size for uri in sections["curves"]["images"]] == [(640, 427)]
    assert "fine-tuned, lightweight inference" in text and "no defence" in text
    assert "gym &lt;b&gt;&amp;" in text and "<b>" not in text  # autoescaped
    with pytest.raises(FileExistsError, match="--force"):
        write_report([str(folder)], tiny_backdoored[0], xt[:200], yt[:200], str(out))


def test_bad_inputs_are_one_line_errors(made, tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    damaged = tmp_path / "damaged"
    damaged.mkdir()
    (damaged / "results.json").write_text("{}")
    mine = tmp_path / "mine.html"
    mine.write_text("the user's page")
    cases = [
        ([str(empty)], "neither a scan folder"),
        ([str(tmp_path / "nowhere")], "No such folder"),
        ([str(damaged)], "not a scan folder"),
        ([made.dirs[0], "--out", str(mine)], "--force"),
        ([made.dirs[0], "--out", str(tmp_path / "page.txt")], ".html"),
        ([made.dirs[0], "--out", str(tmp_path / "o.html")], "another model"),
    ]
    for args, message in cases:
        model = made.clean if message == "another model" else made.model
        argv = ["report", *args, "--model", model, *made.data]
        if "--out" not in args:
            argv += ["--out", str(tmp_path / "page.html")]
        assert main(argv) == 2, args
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and message in err, err
    assert mine.read_text() == "the user's page"
    assert not (tmp_path / "page.html").exists() and not (tmp_path / "o.html").exists()


def test_scan_report_writes_the_page_into_the_scan_folder(made, tmp_path, capsys):
    out = tmp_path / "scan"
    argv = ["scan", made.model, "--dataset", "mnist", "--limit", "200", "--labels", "0,7,9"]
    argv += ["--steps", "10", "--starts", "1", "--out", str(out), "--report"]
    assert main(argv) == 0
    assert f"report:  {out / 'report.html'}" in capsys.readouterr().out
    page = Page((out / "report.html").read_text(encoding="utf-8"))
    assert page.banner and [f["kind"] for f in page.folders] == ["neural-cleanse"]
    assert all(_decode(uri) for uri in page.images)
    (out / "report.html").write_text("the user's notes")  # not a page nc-tf wrote
    assert main(argv) == 2
    assert "did not write it" in capsys.readouterr().err
    assert (out / "report.html").read_text() == "the user's notes"
