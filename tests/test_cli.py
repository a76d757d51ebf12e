"""The command line, end to end through main()."""

from __future__ import annotations

import json

import pytest

from geolocus.cli.main import main


def test_help_on_every_command(capsys):
    for argv in (["--help"], ["evaluate", "--help"], ["refine", "--help"], ["benchmark", "--help"]):
        assert main(argv) == 0
    assert "refine" in capsys.readouterr().out


def test_version(capsys):
    assert main(["--version"]) == 0
    assert "geolocus" in capsys.readouterr().out


def test_evaluate_json_and_missing(tmp_path, capsys):
    t = tmp_path / "t.csv"
    p = tmp_path / "p.csv"
    t.write_text("IMG_ID,LAT,LON\na,0,0\nb,10,10\nc,20,20\n")
    p.write_text("img_id,lat,lon\na,0,0\nb,10,10.1\n")
    out = tmp_path / "s.json"
    assert main(["evaluate", "--pred", str(p), "--truth", str(t), "--json", str(out)]) == 0
    js = json.loads(out.read_text())
    assert js["n"] == 3 and js["n_missing"] == 1
    assert js["acc"]["25"] == pytest.approx(200 / 3)
    captured = capsys.readouterr()
    assert "1 of 3 images have no prediction" in captured.err


def test_evaluate_compare_prints_published_rows(tmp_path, capsys):
    t = tmp_path / "t.csv"
    t.write_text("IMG_ID,LAT,LON\na,0,0\n")
    assert main(["evaluate", "--pred", str(t), "--truth", str(t), "--compare"]) == 0
    out = capsys.readouterr().out
    assert "DualGeo (published)" in out and "GeoCLIP (published)" in out


def test_user_errors_are_one_line_exit_2(tmp_path, capsys):
    t = tmp_path / "t.csv"
    t.write_text("IMG_ID,LAT,LON\na,0,0\n")
    assert main(["evaluate", "--pred", str(tmp_path / "missing.csv"), "--truth", str(t)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("geolocus: error:") and "not found" in err and "\n" not in err


def test_refine_writes_predictions(tmp_path, im2gps3k):
    out = tmp_path / "p.csv"
    nb = str(im2gps3k / "g3_neighbours.csv")
    labels = str(im2gps3k / "labels.csv")
    assert main(["refine", "--neighbours", nb, "--method", "dualgeo", "--out", str(out)]) == 0
    assert out.read_text().splitlines()[0] == "IMG_ID,LAT,LON"
    assert len(out.read_text().splitlines()) == 1965
    assert main(["evaluate", "--pred", str(out), "--truth", labels]) == 0


def test_refine_fit_requires_labels(tmp_path, capsys):
    n = tmp_path / "n.csv"
    n.write_text("IMG_ID,near_0_lat,near_0_lon\nq,1,2\n")
    code = main(["refine", "--neighbours", str(n), "--out", str(tmp_path / "o.csv"),
                 "--fit", str(n)])  # fmt: skip
    assert code == 2 and "--fit and --labels go together" in capsys.readouterr().err
