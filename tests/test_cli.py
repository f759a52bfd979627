import json

import pytest

from nc_tf.cli import build_parser, main

COMMANDS = ("inject", "train", "evaluate", "scan", "detect", "mitigate")


@pytest.mark.parametrize("command", COMMANDS)
def test_help_on_every_command(command, capsys):
    with pytest.raises(SystemExit) as e:
        main([command, "--help"])
    assert e.value.code == 0
    assert ("--json" if command == "detect" else "--dataset") in capsys.readouterr().out


def test_scan_help_lists_every_reference_setting(capsys):
    with pytest.raises(SystemExit):
        main(["scan", "--help"])
    text = capsys.readouterr().out
    for flag in (
        "--steps",
        "--batch-size",
        "--nb-sample",
        "--lr",
        "--init-cost",
        "--regularization",
        "--attack-succ-threshold",
        "--patience",
        "--cost-multiplier",
        "--early-stop-threshold",
        "--early-stop-patience",
        "--upsample-size",
        "--preset",
        "--low-cost",
        "--partial",
        "--divide-and-conquer",
    ):
        assert flag in text


def test_parser_lists_commands():
    text = build_parser().format_help()
    assert all(c in text for c in COMMANDS)


def test_errors_are_clear(tmp_path, capsys):
    assert main(["evaluate", str(tmp_path / "nope.keras")]) == 2
    assert "No such model file" in capsys.readouterr().err
    out = tmp_path / "taken"
    out.mkdir()
    (out / "model.keras").write_text("user's model")
    assert main(["inject", "--target", "7", "--out", str(out)]) == 2
    assert "--force" in capsys.readouterr().err
    assert (out / "model.keras").read_text() == "user's model"
    assert (
        main(
            [
                "inject",
                "--target",
                "12",
                "--limit",
                "50",
                "--epochs",
                "1",
                "--out",
                str(tmp_path / "o"),
            ]
        )
        == 2
    )
    assert "out of range" in capsys.readouterr().err


def test_inject_then_evaluate(tmp_path, capsys):
    out = tmp_path / "run"
    assert (
        main(
            [
                "inject",
                "--dataset",
                "mnist",
                "--target",
                "3",
                "--limit",
                "3000",
                "--epochs",
                "2",
                "--seed",
                "5",
                "--out",
                str(out),
                "--json",
            ]
        )
        == 0
    )
    report = json.loads(capsys.readouterr().out)
    attack = json.loads((out / "attack.json").read_text())
    assert attack["targets"] == [3] and attack["triggers"][0]["kind"] == "square"
    assert attack["training"]["n_train"] == 3000 and report["clean_accuracy"] > 0.8
    assert (
        main(
            [
                "evaluate",
                str(out / "model.keras"),
                "--attack",
                str(out / "attack.json"),
                "--limit",
                "500",
                "--json",
            ]
        )
        == 0
    )
    ev = json.loads(capsys.readouterr().out)
    assert ev["n_samples"] == 500 and ev["attack_success_rate"] >= 0.8
    assert ev["intensity"] == "raw"
    # scan two labels of it, then detect reads the folder; bad flags are refused.
    assert (
        main(
            [
                "scan",
                str(out / "model.keras"),
                "--limit",
                "300",
                "--labels",
                "2,3,4",
                "--steps",
                "20",
                "--nb-sample",
                "32",
                "--out",
                str(tmp_path / "s"),
                "--json",
            ]
        )
        == 0
    )
    record = json.loads(capsys.readouterr().out)
    assert sorted(record["labels"]) == ["2", "3", "4"] and record["settings"]["steps"] == 20
    norms = {int(k): v["l1_norm"] for k, v in record["labels"].items()}
    assert min(norms, key=norms.get) == 3, "the target's reversed trigger is the smallest"
    assert main(["detect", str(tmp_path / "s"), "--json"]) == 0
    verdict = json.loads(capsys.readouterr().out)
    assert verdict["anomaly_index"] == pytest.approx(record["outlier"]["anomaly_index"])
    assert max(verdict["per_label"], key=verdict["per_label"].get) == "3"
    assert (
        main(
            ["scan", str(out / "model.keras"), "--divide-and-conquer", "--out", str(tmp_path / "t")]
        )
        == 2
    )
    assert "add --partial" in capsys.readouterr().err
    assert (
        main(["scan", str(out / "model.keras"), "--labels", "a,b", "--out", str(tmp_path / "u")])
        == 2
    )
    assert "comma-separated" in capsys.readouterr().err


def test_mitigate_unlearn_from_a_scan_folder(tmp_path, capsys, tiny_backdoored, tiny_scan):
    model, trigger, _ = tiny_backdoored
    path = tmp_path / "model.keras"
    model.save(path)
    attack = tmp_path / "attack.json"
    attack.write_text(json.dumps({"intensity": "raw", "targets": [7], "triggers": [trigger.spec]}))
    out = tmp_path / "fixed"
    common = ["--dataset", "mnist", "--train-limit", "3000", "--limit", "500", "--out", str(out)]
    assert main(["mitigate", str(path), "--method", "unlearn", *common]) == 2
    assert "--scan DIR" in capsys.readouterr().err
    assert (
        main(
            [
                "mitigate",
                str(path),
                "--method",
                "unlearn",
                "--scan",
                tiny_scan[1],
                "--attack",
                str(attack),
                "--data-ratio",
                "1.0",
                "--scan-steps",
                "100",
                "--json",
                *common,
            ]
        )
        == 0
    )
    report = json.loads(capsys.readouterr().out)
    saved = json.loads((out / "mitigation.json").read_text())
    assert saved["before"] == report["before"] and saved["options"] == {"data_ratio": 1.0}
    assert report["before"]["asr_original"][0] > 0.9 > 0.1 > report["after"]["asr_original"][0]
    assert report["after"]["accuracy"] >= report["before"]["accuracy"] - 0.05
    # verified by a fresh scan of the unlearned model: label 7 and control labels at 50%
    check = report["verification"]
    assert check["verified"] is True and check["surviving"] == []
    assert check["labels"]["7"]["role"] == "flagged" and len(check["labels"]) == 9
    verification = json.loads((out / "verification" / "results.json").read_text())
    assert verification["settings"]["attack_succ_threshold"] == 0.5
    assert verification["settings"]["seed"] != 0 and verification["settings"]["steps"] == 100
    # after the repair, asr_reversed is the success of the triggers reversed from it
    assert len(report["after"]["asr_reversed"]) == 1 == len(report["after"]["asr_scan_triggers"])
    # the unlearned model reloads and gives the figures the report holds
    assert (
        main(
            [
                "evaluate",
                str(out / "model.keras"),
                "--attack",
                str(attack),
                "--limit",
                "500",
                "--json",
            ]
        )
        == 0
    )
    ev = json.loads(capsys.readouterr().out)
    assert ev["accuracy"] == pytest.approx(report["after"]["accuracy"])
    assert ev["attack_success_rate"] == pytest.approx(report["after"]["asr_original"][0])
    assert main(["mitigate", str(path), "--method", "flip", *common]) == 2
    assert "--force" in capsys.readouterr().err


def test_mitigate_repair_runs_its_own_scans(tmp_path, capsys, tiny_backdoored):
    model, _, _ = tiny_backdoored
    path = tmp_path / "model.keras"
    model.save(path)
    out = tmp_path / "repair"
    code = main(
        [
            "mitigate",
            str(path),
            "--method",
            "repair",
            "--rounds",
            "1",
            "--dataset",
            "mnist",
            "--train-limit",
            "2000",
            "--val-ratio",
            "0.25",
            "--limit",
            "300",
            "--out",
            str(out),
            "--scan-steps",
            "40",
            "--scan-starts",
            "1",
            "--json",
        ]
    )
    report = json.loads((out / "mitigation.json").read_text())
    assert code == (0 if report["verification"]["verified"] else 3)
    assert report["verification"]["labels"], "the flagged label was verified by a fresh scan"
    scanned = json.loads((out / "round_0" / "scan" / "results.json").read_text())
    assert scanned["settings"]["steps"] == 40, "--scan-steps reaches the scans"
    assert scanned["settings"]["starts"] == 1, "--scan-starts reaches the scans"
    rounds = report["details"]["rounds"]
    assert rounds[0]["round"] == 0 and len(rounds) <= 2
    assert (out / "round_0" / "scan" / "results.json").exists() and (out / "model.keras").exists()


def test_inject_shaped_noisy_trigger_is_recorded_exactly(tmp_path, capsys):
    from injection import load_triggers

    out = tmp_path / "tri"
    assert (
        main(
            [
                "inject",
                "--target",
                "2",
                "--shape",
                "triangle",
                "--color",
                "noisy",
                "--size",
                "5",
                "--limit",
                "600",
                "--epochs",
                "1",
                "--seed",
                "3",
                "--out",
                str(out),
                "--json",
            ]
        )
        == 0
    )
    capsys.readouterr()
    spec = json.loads((out / "attack.json").read_text())["triggers"][0]
    assert spec["kind"] == "shape" and spec["shape"] == "triangle" and spec["color"] == "noisy"
    trigger = load_triggers(str(out / "attack.json"))[0]
    assert int(trigger.mask.sum()) == 15 and trigger.target == 2
    assert (
        main(
            [
                "inject",
                "--target",
                "2",
                "--color",
                "red",
                "--limit",
                "50",
                "--out",
                str(tmp_path / "bad"),
            ]
        )
        == 2
    )
    assert "'noisy'" in capsys.readouterr().err


def test_inject_attack_variants_and_per_trigger_evaluation(tmp_path, capsys):
    from injection import load_triggers

    out = tmp_path / "multi"
    assert (
        main(
            [
                "inject",
                "--attack",
                "multi-label",
                "--target",
                "1",
                "--target",
                "2",
                "--limit",
                "600",
                "--epochs",
                "1",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    report = json.loads((out / "attack.json").read_text())
    assert report["attack"] == ["multi-label"] and report["targets"] == [1, 2]
    assert [t.target for t in load_triggers(str(out / "attack.json"))] == [1, 2]
    capsys.readouterr()
    assert (
        main(
            [
                "evaluate",
                str(out / "model.keras"),
                "--attack",
                str(out / "attack.json"),
                "--limit",
                "200",
            ]
        )
        == 0
    )
    text = capsys.readouterr().out
    assert "trigger 0 (multi-label, bottom-right) -> 1:" in text and "-> 2:" in text
    a2a = tmp_path / "a2a"
    assert (
        main(
            [
                "inject",
                "--attack",
                "all-to-all",
                "--limit",
                "600",
                "--epochs",
                "1",
                "--out",
                str(a2a),
                "--json",
            ]
        )
        == 0
    )
    capsys.readouterr()
    trigger = load_triggers(str(a2a / "attack.json"))[0]
    assert trigger.all_to_all == 10 and trigger.poison_labels([9]).tolist() == [0]
    assert main(["inject", "--attack", "blend", "--limit", "50", "--out", str(tmp_path / "b")]) == 2
    assert "--target" in capsys.readouterr().err
    assert (
        main(
            [
                "inject",
                "--attack",
                "blend",
                "--target",
                "1",
                "--image",
                "nope.png",
                "--limit",
                "50",
                "--out",
                str(tmp_path / "c"),
            ]
        )
        == 2
    )
    assert "'logo', 'watermark'" in capsys.readouterr().err


def test_an_ineffective_repair_is_not_verified_and_exits_3(
    tmp_path, capsys, tiny_backdoored, tiny_scan
):
    model, trigger, _ = tiny_backdoored
    path = tmp_path / "model.keras"
    model.save(path)
    common = [
        "mitigate",
        str(path),
        "--method",
        "unlearn",
        "--scan",
        tiny_scan[1],
        "--epochs",
        "0",
        "--no-peel",
        "--dataset",
        "mnist",
        "--train-limit",
        "3000",
        "--limit",
        "300",
        "--scan-steps",
        "100",
    ]
    # no training step: the backdoor is intact, and the fresh scan says so
    assert main([*common, "--out", str(tmp_path / "none")]) == 3
    err = capsys.readouterr().err
    assert "NOT verified" in err and "label(s) 7" in err
    report = json.loads((tmp_path / "none" / "mitigation.json").read_text())
    assert report["verification"]["verified"] is False
    assert report["verification"]["surviving"] == [7]
    assert report["verification"]["labels"]["7"]["anomaly_index"] > 2
    # --no-verify: no verification scan, and the report says the repair is unverified
    assert main([*common, "--no-verify", "--out", str(tmp_path / "skip")]) == 0
    report = json.loads((tmp_path / "skip" / "mitigation.json").read_text())
    assert report["verification"]["verified"] is None
    assert "unverified" in report["verification"]["status"]
    assert not (tmp_path / "skip" / "verification").exists()
