"""``fcres evaluate`` picks the measures that fit the data: volume measures in mm for scans
with voxel spacing (NIfTI, MHA), the ISBI EM measures for EM-like TIFF stacks."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import SimpleITK as sitk
import tifffile
from scipy.spatial import cKDTree

from napari_fcres.cli import main
from napari_fcres.io import write_image
from napari_fcres.sample_data import synthetic_em_stack

SPACING = (2.5, 0.6, 0.6)  # z, y, x in mm
SHAPE = (10, 12, 12)

# Box of 5 x 6 x 6 voxels, and the same box one slice further along z. Each surface has
# 2 * 36 + 3 * 20 = 132 voxels. From either box: the 36 voxels of the outer face are one
# slice (2.5 mm) from the other surface; on the inner face, the 12 voxels next to the ring
# are one pixel (0.6 mm) from the other box's ring and the 4 central ones two pixels
# (1.2 mm); the other 80 lie on the other surface.
BOX_ABD = (36 * 2.5 + 12 * 0.6 + 4 * 1.2) / 132  # 0.7727 mm
BOX_HD95 = 2.5  # 72 of the 264 distances are 2.5 mm, more than the top 5 %
BOX_DICE = 2 * 4 * 36 / (2 * 5 * 36)


def box(z0: int) -> np.ndarray:
    out = np.zeros(SHAPE, dtype=np.uint8)
    out[z0 : z0 + 5, 3:9, 3:9] = 1
    return out


def write_sitk(path, data: np.ndarray, spacing=SPACING) -> str:
    image = sitk.GetImageFromArray(data)
    image.SetSpacing(tuple(reversed(spacing)))
    sitk.WriteImage(image, str(path), True)
    return str(path)


def run(capsys, *argv: str) -> tuple[int, str, str]:
    rc = main(["evaluate", *argv])
    out, err = capsys.readouterr()
    return rc, out, err


def value(out: str, key: str) -> float:
    """The number printed after ``key`` at the start of a line of the text output."""
    match = re.search(rf"^{key}\s+(\S+)", out, flags=re.MULTILINE)
    assert match, f"{key!r} not in output:\n{out}"
    return float(match.group(1))


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("evaluate_volume")
    paths = {
        "gt_nii": write_sitk(d / "gt.nii.gz", box(2)),
        "pred_nii": write_sitk(d / "pred.nii.gz", box(3)),
        "gt_mha": write_sitk(d / "gt.mha", box(2)),
        "pred_mha": write_sitk(d / "pred.mha", box(3)),
        "gt_mha_x2": write_sitk(d / "gt_x2.mha", box(2), tuple(2 * s for s in SPACING)),
        "pred_mha_x2": write_sitk(d / "pred_x2.mha", box(3), tuple(2 * s for s in SPACING)),
        "gt_mha_z3": write_sitk(d / "gt_z3.mha", box(2), (3.0, 0.6, 0.6)),
        "empty_nii": write_sitk(d / "empty.nii.gz", np.zeros(SHAPE, np.uint8)),
        "gt_tif": str(d / "gt.tif"),
        "pred_tif": str(d / "pred.tif"),
    }
    tifffile.imwrite(paths["gt_tif"], box(2) * 255, photometric="minisblack")
    tifffile.imwrite(paths["pred_tif"], box(3) * 255, photometric="minisblack")
    image, labels = synthetic_em_stack(shape=(3, 64, 64), seed=2)
    prob = np.where(labels > 0, 0.8, 0.1).astype(np.float32)
    tifffile.imwrite(d / "em_labels.tif", labels, photometric="minisblack")
    tifffile.imwrite(d / "em_prob.tif", prob, photometric="minisblack")
    tifffile.imwrite(d / "em_labels_2d.tif", labels[0], photometric="minisblack")
    tifffile.imwrite(d / "em_prob_2d.tif", prob[0], photometric="minisblack")
    paths.update(
        em_labels=str(d / "em_labels.tif"),
        em_prob=str(d / "em_prob.tif"),
        em_labels_2d=str(d / "em_labels_2d.tif"),
        em_prob_2d=str(d / "em_prob_2d.tif"),
    )
    paths["dir"] = d
    return paths


# --------------------------------------------------------------------------- scans


def test_nifti_gets_volume_measures_in_mm(files, capsys):
    rc, out, _ = run(capsys, files["pred_nii"], files["gt_nii"])
    assert rc == 0
    assert re.search(r"^measures\s+volume \(auto: the prediction is a NIfTI scan", out, re.M)
    assert re.search(r"^spacing\s+2\.5 x 0\.6 x 0\.6 mm", out, re.M)
    assert value(out, "dice") == pytest.approx(BOX_DICE, abs=1e-4)
    assert value(out, "abd") == pytest.approx(BOX_ABD, abs=1e-4)
    assert value(out, "hd95") == pytest.approx(BOX_HD95, abs=1e-4)
    assert value(out, "rvd") == 0.0
    assert re.search(r"^abd\s+\S+ mm", out, re.M) and re.search(r"^hd95\s+\S+ mm", out, re.M)
    assert re.search(r"^voxels\s+180 predicted, 180 ground truth", out, re.M)
    assert "v_rand" not in out and "v_info" not in out and "pixel_error" not in out


def test_mha_json_reports_rule_and_spacing_and_scales(files, capsys):
    rc, out, _ = run(capsys, files["pred_mha"], files["gt_mha"], "--json")
    assert rc == 0
    a = json.loads(out)
    assert a["measures"] == "volume"
    assert a["measures_rule"] == "auto: the prediction is a MetaImage scan with voxel spacing"
    assert a["spacing"] == pytest.approx(SPACING) and a["unit"] == "mm"
    assert a["spacing_source"] == "the prediction and labels headers"
    assert "v_rand" not in a and "v_info" not in a
    assert a["average_boundary_distance"] == pytest.approx(BOX_ABD)
    assert a["hausdorff95"] == pytest.approx(BOX_HD95)
    assert a["volume_true"] == pytest.approx(180 * 2.5 * 0.6 * 0.6)
    assert a["notes"] == []

    # twice the voxel size: distances in mm double, Dice and RVD do not change
    rc, out, _ = run(capsys, files["pred_mha_x2"], files["gt_mha_x2"], "--json")
    b = json.loads(out)
    assert b["spacing"] == pytest.approx([5.0, 1.2, 1.2])
    assert b["average_boundary_distance"] == pytest.approx(2 * BOX_ABD)
    assert b["hausdorff95"] == pytest.approx(2 * BOX_HD95)
    assert b["dice"] == pytest.approx(a["dice"])
    assert b["relative_volume_difference"] == pytest.approx(a["relative_volume_difference"])


def test_spacing_from_either_header_and_disagreement(files, capsys):
    # NIfTI (float32 header) against MHA: the same spacing, no error
    rc, out, _ = run(capsys, files["pred_nii"], files["gt_mha"])
    assert rc == 0 and value(out, "abd") == pytest.approx(BOX_ABD, abs=1e-4)
    # TIFF prediction without spacing against a NIfTI: the labels' spacing is used
    rc, out, _ = run(capsys, files["pred_tif"], files["gt_nii"], "--json")
    res = json.loads(out)
    assert (
        rc == 0
        and res["measures_rule"] == "auto: the labels are a NIfTI scan with voxel spacing"
        and res["spacing_source"] == "the labels header"
    )
    assert res["hausdorff95"] == pytest.approx(BOX_HD95)
    # 2.5 mm slices against 3 mm slices: a one-line error naming both files
    rc, out, err = run(capsys, files["pred_nii"], files["gt_mha_z3"])
    assert rc == 2 and out == ""
    line = err.strip().splitlines()[-1]
    assert line.startswith("fcres evaluate: error:")
    assert "pred.nii.gz" in line and "gt_z3.mha" in line
    assert "2.5 x 0.6 x 0.6 mm" in line and "3 x 0.6 x 0.6 mm" in line
    # --spacing overrides the headers (and settles the disagreement)
    rc, out, _ = run(capsys, files["pred_nii"], files["gt_mha_z3"], "--spacing", "5", "1.2", "1.2")
    assert rc == 0
    assert re.search(r"^spacing\s+5 x 1\.2 x 1\.2 mm \(Z Y X, from --spacing\)", out, re.M)
    assert value(out, "abd") == pytest.approx(2 * BOX_ABD, abs=1e-4)
    rc, _, err = run(capsys, files["pred_nii"], files["gt_nii"], "--spacing", "1", "2")
    assert rc == 2 and "--spacing has 2 values but the images have 3 axes" in err


def test_sphere_probability_map_against_brute_force(files, capsys):
    d = files["dir"]
    z, y, x = np.meshgrid(*(np.arange(n) * s for n, s in zip((12, 40, 40), SPACING)), indexing="ij")
    r2 = (z - 15.0) ** 2 + (y - 12.0) ** 2 + (x - 12.0) ** 2
    gt = r2 <= 6.0**2
    pred = r2 <= 7.2**2  # 1.2 mm (two pixels in-plane) larger radius
    prob = np.where(pred, 0.7, 0.2).astype(np.float32)  # > 0.5 is the predicted mask
    write_sitk(d / "sphere_gt.nii.gz", gt.astype(np.uint8))
    write_sitk(d / "sphere_prob.nii.gz", prob)
    rc, out, _ = run(capsys, str(d / "sphere_prob.nii.gz"), str(d / "sphere_gt.nii.gz"), "--json")
    assert rc == 0
    res = json.loads(out)

    def surface_mm(mask: np.ndarray) -> np.ndarray:
        padded = np.pad(mask, 1)
        inner = padded.copy()
        for axis in range(3):
            for step in (-1, 1):
                inner &= np.roll(padded, step, axis=axis)
        return np.argwhere((padded & ~inner)[1:-1, 1:-1, 1:-1]) * np.array(SPACING)

    sp, st = surface_mm(pred), surface_mm(gt)
    distances = np.concatenate([cKDTree(st).query(sp)[0], cKDTree(sp).query(st)[0]])
    assert res["average_boundary_distance"] == pytest.approx(distances.mean())
    assert res["hausdorff95"] == pytest.approx(np.percentile(distances, 95))
    n_p, n_t = int(pred.sum()), int(gt.sum())
    assert (res["voxels_pred"], res["voxels_true"]) == (n_p, n_t)
    assert res["relative_volume_difference"] == pytest.approx(100 * (n_p - n_t) / n_t)
    assert res["relative_volume_difference"] == pytest.approx(100 * (1.2**3 - 1), abs=15)
    assert 0.6 <= res["average_boundary_distance"] <= 2.5

    # a higher threshold leaves nothing: Dice 0, infinite distances, a note, no crash
    rc, out, _ = run(
        capsys, str(d / "sphere_prob.nii.gz"), str(d / "sphere_gt.nii.gz"), "--threshold", "0.8"
    )
    assert rc == 0 and value(out, "dice") == 0.0
    assert re.search(r"^abd\s+inf mm", out, re.M) and re.search(r"^hd95\s+inf mm", out, re.M)
    assert value(out, "rvd") == -100.0
    assert re.search(
        r"^note\s+the prediction is empty \(no voxel above threshold 0\.8\)", out, re.M
    )


def test_empty_masks_give_notes_not_crashes(files, capsys):
    rc, out, _ = run(capsys, files["empty_nii"], files["gt_nii"])
    assert rc == 0 and "the prediction is empty" in out and re.search(r"^hd95\s+inf", out, re.M)

    rc, out, _ = run(capsys, files["pred_nii"], files["empty_nii"])
    assert rc == 0
    assert re.search(r"^note\s+the ground truth is empty", out, re.M)
    assert re.search(r"^abd\s+inf mm", out, re.M) and re.search(r"^rvd\s+\+inf %", out, re.M)

    rc, out, _ = run(capsys, files["empty_nii"], files["empty_nii"], "--json")
    assert rc == 0
    res = json.loads(out)  # strict JSON: undefined values are null, the note says why
    assert "NaN" not in out and "Infinity" not in out
    assert res["average_boundary_distance"] is None and res["hausdorff95"] is None
    assert res["relative_volume_difference"] is None
    assert res["notes"] == [
        "ground truth and prediction are both empty: boundary distances and RVD are undefined"
    ]


def test_measures_option_forces_a_set(files, capsys):
    rc, out, _ = run(capsys, files["pred_nii"], files["gt_nii"], "--measures", "em")
    assert rc == 0 and "v_rand" in out and "v_info" in out and "hd95" not in out
    assert re.search(r"^measures\s+em \(--measures em\)", out, re.M)

    rc, out, _ = run(capsys, files["pred_nii"], files["gt_nii"], "--measures", "all", "--json")
    res = json.loads(out)
    assert res["measures"] == "all" and res["measures_rule"] == "--measures all"
    for key in (
        "v_rand",
        "v_info",
        "pixel_error",
        "dice",
        "average_boundary_distance",
        "hausdorff95",
        "relative_volume_difference",
    ):
        assert key in res
    assert res["spacing"] == pytest.approx(SPACING)

    # forced volume measures on a TIFF without spacing: distances in px, said so
    rc, out, _ = run(capsys, files["pred_tif"], files["gt_tif"], "--measures", "volume")
    assert rc == 0
    assert re.search(r"^spacing\s+none stored in either file: distances in px", out, re.M)
    assert re.search(r"^hd95\s+1\.0000 px", out, re.M)  # one slice = one px
    assert re.search(r"^volume\s+180 predicted, 180 ground truth \(px\^3\)", out, re.M)


def test_tiff_with_mm_spacing_is_a_scan(files, capsys):
    d = files["dir"]
    write_image(d / "gt_mm.tif", box(2), spacing=SPACING, unit="mm")
    write_image(d / "pred_mm.tif", box(3), spacing=SPACING, unit="mm")
    rc, out, _ = run(capsys, str(d / "pred_mm.tif"), str(d / "gt_mm.tif"))
    assert rc == 0
    assert re.search(
        r"^measures\s+volume \(auto: the prediction has voxel spacing in mm\)", out, re.M
    )
    assert value(out, "abd") == pytest.approx(BOX_ABD, abs=1e-4)
    assert "v_rand" not in out


# --------------------------------------------------------------------------- EM


def test_em_tiff_stack_keeps_vrand_vinfo(files, capsys):
    rc, out, _ = run(capsys, files["em_prob"], files["em_labels"])
    assert rc == 0
    assert re.search(r"^measures\s+em \(auto: an EM-like stack", out, re.M)
    for key in ("v_rand", "v_info", "dice", "pixel_error"):
        assert 0.0 <= value(out, key) <= 1.0
    assert not re.search(r"^(hd95|abd|rvd|spacing)\s", out, re.M)

    rc, out, _ = run(capsys, files["em_prob"], files["em_labels"], "--json")
    res = json.loads(out)
    assert res["measures"] == "em" and res["measures_rule"].startswith("auto: an EM-like")
    assert res["spacing"] is None and res["spacing_source"] == "not used"
    assert "hausdorff95" not in res and 0.0 <= res["v_rand"] <= 1.0

    rc, out, _ = run(capsys, files["em_prob_2d"], files["em_labels_2d"])
    assert rc == 0 and re.search(r"^measures\s+em \(auto: a 2D image\)", out, re.M)
    assert "v_rand" in out


def test_tiff_stack_with_spacing_option_is_a_scan(files, capsys):
    rc, out, _ = run(capsys, files["pred_tif"], files["gt_tif"], "--spacing", "2.5", "0.6", "0.6")
    assert rc == 0
    assert re.search(r"^measures\s+volume \(auto: --spacing given\)", out, re.M)
    assert value(out, "hd95") == pytest.approx(BOX_HD95, abs=1e-4)
    assert "v_rand" not in out


def test_shape_mismatch_is_one_line(files, capsys):
    rc, out, err = run(capsys, files["pred_nii"], files["em_labels"])
    assert rc == 2 and out == ""
    assert (
        err.strip()
        .splitlines()[-1]
        .startswith("fcres evaluate: error: the prediction has shape (10, 12, 12)")
    )
