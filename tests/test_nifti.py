"""NIfTI in and out, the displacement in ITK's convention, and the register CLI."""
import json

import nibabel as nib
import numpy as np
import pytest
import torch

from ofg_lib import models
from ofg_lib.nifti import disp_to_mm, read_image, read_pair, write_outputs
from ofg_lib.register import main
from ofg_lib.transform import warp

from conftest import smooth_disp, smooth_volume

# A non-trivial grid: anisotropic spacing, a flipped axis, a small rotation and an offset.
_c, _s = np.cos(0.2), np.sin(0.2)
AFFINE = np.array([[-1.2 * _c, -0.9 * _s, 0, 40.0],
                   [1.2 * _s, -0.9 * _c, 0, -12.0],
                   [0, 0, 1.1, 7.5],
                   [0, 0, 0, 1]])
SHAPE = (32, 32, 48)


def _save(path, array, affine=AFFINE):
    nib.save(nib.Nifti1Image(np.asarray(array), affine), str(path))
    return path


@pytest.fixture
def pair_files(tmp_path):
    f = smooth_volume(SHAPE, seed=1, coarse=5, dtype=torch.float32)[0, 0].numpy() * 300 + 20
    m = smooth_volume(SHAPE, seed=2, coarse=5, dtype=torch.float32)[0, 0].numpy() * 300 + 20
    seg = (np.indices(SHAPE).sum(0) // 20 + 1).astype(np.int16)
    return {"moving": _save(tmp_path / "m.nii.gz", m), "fixed": _save(tmp_path / "f.nii.gz", f),
            "moving_seg": _save(tmp_path / "ms.nii.gz", seg), "fixed_seg": _save(tmp_path / "fs.nii.gz", seg),
            "raw": (m, f)}


def test_round_trip_keeps_data_and_affine(pair_files, tmp_path):
    x, affine = read_image(pair_files["moving"], normalize=False)
    np.testing.assert_allclose(x[0].numpy(), pair_files["raw"][0], rtol=1e-6)
    np.testing.assert_allclose(affine, AFFINE, atol=1e-5)
    xn, _ = read_image(pair_files["moving"])
    assert float(xn.min()) == 0.0 and float(xn.max()) == pytest.approx(1.0)
    disp = smooth_disp(SHAPE, 1.5, seed=4, dtype=torch.float32)
    paths = write_outputs(tmp_path / "out", affine, disp, warped=x[None], warped_seg=torch.ones(1, 1, *SHAPE))
    back = nib.load(str(paths["disp_vox"]))
    np.testing.assert_allclose(np.moveaxis(back.get_fdata(), -1, 0), disp[0].numpy(), atol=1e-6)
    np.testing.assert_allclose(back.affine, AFFINE, atol=1e-5)
    mm = nib.load(str(paths["disp_mm"]))
    assert mm.shape == (*SHAPE, 1, 3) and mm.header.get_intent()[0] == "vector"
    # one voxel by hand: d_LPS = diag(-1, -1, 1) A u
    u = disp[0, :, 3, 4, 5].double().numpy()
    np.testing.assert_allclose(mm.get_fdata()[3, 4, 5, 0], np.diag([-1, -1, 1]) @ AFFINE[:3, :3] @ u, rtol=1e-5)
    assert nib.load(str(paths["warped_seg"])).get_data_dtype() == np.int32
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted(f"{k}.nii.gz" for k in paths)


def test_ants_applies_our_mm_displacement_as_our_warp(pair_files, tmp_path):
    ants = pytest.importorskip("ants")
    pair = read_pair(pair_files["moving"], pair_files["fixed"], normalize=False)
    disp = smooth_disp(SHAPE, 2.0, seed=5, dtype=torch.float32)
    paths = write_outputs(tmp_path, pair["affine"], disp)
    theirs = ants.apply_transforms(ants.image_read(str(pair_files["fixed"])), ants.image_read(str(pair_files["moving"])),
                                   [str(paths["disp_mm"])], interpolator="linear").numpy()
    ours = warp(pair["moving"][None], disp)[0, 0].numpy()
    inner = (slice(4, -4),) * 3
    scale = float(np.abs(ours[inner]).max())
    assert np.abs(theirs[inner] - ours[inner]).max() < 1e-3 * scale
    # and the sign matters: the opposite displacement is far off
    write_outputs(tmp_path / "neg", pair["affine"], -disp)
    flipped = ants.apply_transforms(ants.image_read(str(pair_files["fixed"])),
                                    ants.image_read(str(pair_files["moving"])),
                                    [str(tmp_path / "neg" / "disp_mm.nii.gz")]).numpy()
    assert np.abs(flipped[inner] - ours[inner]).max() > 0.05 * scale


def test_bad_inputs_name_the_file(pair_files, tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.nii.gz: file not found"):
        read_pair(tmp_path / "nope.nii.gz", pair_files["fixed"])
    flat = _save(tmp_path / "flat.nii.gz", np.zeros((8, 8), np.float32))
    with pytest.raises(ValueError, match="flat.nii.gz: expected a 3-D image"):
        read_pair(flat, pair_files["fixed"])
    nan = np.ones(SHAPE, np.float32)
    nan[1, 2, 3] = np.nan
    with pytest.raises(ValueError, match="nan.nii.gz: image has 1 non-finite"):
        read_pair(_save(tmp_path / "nan.nii.gz", nan), pair_files["fixed"])
    small = _save(tmp_path / "small.nii.gz", np.ones((8, 8, 8), np.float32))
    with pytest.raises(ValueError, match="small.nii.gz has shape"):
        read_pair(small, pair_files["fixed"])
    shifted = AFFINE.copy()
    shifted[0, 3] += 2
    other = _save(tmp_path / "other.nii.gz", pair_files["raw"][0], shifted)
    with pytest.raises(ValueError, match="different affines"):
        read_pair(other, pair_files["fixed"])
    (tmp_path / "junk.nii.gz").write_bytes(b"not a nifti")
    with pytest.raises(ValueError, match="junk.nii.gz: not a readable NIfTI"):
        read_pair(tmp_path / "junk.nii.gz", pair_files["fixed"])
    with pytest.raises(ValueError, match="ms2.nii.gz: label map has shape"):
        read_pair(pair_files["moving"], pair_files["fixed"], _save(tmp_path / "ms2.nii.gz", np.ones((8, 8, 8))))
    with pytest.raises(ValueError, match="ms3.nii.gz and .*f.nii.gz have different affines"):
        read_pair(pair_files["moving"], pair_files["fixed"], _save(tmp_path / "ms3.nii.gz", np.ones(SHAPE), shifted))
    with pytest.raises(ValueError, match="junk.nii.gz: not a readable NIfTI"):
        read_pair(pair_files["moving"], pair_files["fixed"], tmp_path / "junk.nii.gz")


def test_disp_to_mm_is_linear_in_the_affine():
    u = torch.zeros(3, 2, 2, 2)
    u[0] = 1.0  # one voxel along array axis 0
    np.testing.assert_allclose(disp_to_mm(u, np.diag([2.0, 3.0, 4.0, 1.0]))[0, 0, 0], [-2.0, 0, 0])


def _tiny_run(folder, size):
    model = models.build("voxelmorph-1-tiny", size)
    folder.mkdir()
    torch.save({"model": model.state_dict(), "history": [],
                "config": {"model": "voxelmorph-1-tiny", "img_size": list(size), "dataset": "embedded",
                           "strategy": "ofg"}}, folder / "checkpoint.pt")
    return folder


def test_cli_writes_readable_files(pair_files, tmp_path, capsys):
    run = _tiny_run(tmp_path / "run", (32, 32, 32))
    args = ["--moving", str(pair_files["moving"]), "--fixed", str(pair_files["fixed"]),
            "--moving-seg", str(pair_files["moving_seg"]), "--fixed-seg", str(pair_files["fixed_seg"])]
    assert main(["--run", str(run), *args, "--out", str(tmp_path / "o")]) == 2
    assert "trained at (32, 32, 32)" in capsys.readouterr().err
    run2 = _tiny_run(tmp_path / "run2", SHAPE)
    assert main(["--run", str(run2), *args, "--out", str(tmp_path / "net")]) == 0
    assert main(["--method", "instance", *args, "--out", str(tmp_path / "inst")]) == 0
    for out in ("net", "inst"):
        summary = json.loads((tmp_path / out / "register.json").read_text())
        assert 0 <= summary["dice"] <= 1 and summary["fold_percent"] >= 0
        for name in ("warped", "warped_seg", "disp_vox", "disp_mm"):
            img = nib.load(str(tmp_path / out / f"{name}.nii.gz"))
            assert img.shape[:3] == SHAPE and np.allclose(img.affine, AFFINE, atol=1e-5)
    assert main(["--method", "instance", "--moving", str(tmp_path / "missing.nii.gz"), "--fixed",
                 str(pair_files["fixed"]), "--out", str(tmp_path / "x")]) == 2
    assert "missing.nii.gz: file not found" in capsys.readouterr().err
