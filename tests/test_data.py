import os
import pickle
import random

import nibabel as nib
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

import ofg_lib.data.embedded as embedded_mod
from ofg_lib.data import IXI, LPBA40, OASIS, Embedded, mni_template, mni_tissues, random_smooth_disp
from ofg_lib.losses import lncc
from ofg_lib.metrics import fold_fraction
from ofg_lib.transform import warp

SIZE = (24, 28, 32)


def listing(root):
    return sorted((p.relative_to(root), p.stat().st_mtime_ns) for p in root.rglob("*"))


# ---------------------------------------------------------------- embedded cohort
@pytest.fixture(scope="module")
def cohort_root(tmp_path_factory):
    return tmp_path_factory.mktemp("cohort")


def test_embedded_items_have_the_contract(cohort_root):
    ds = Embedded("val", img_size=SIZE, root=cohort_root, n=2)
    item = ds[0]
    assert item["moving"].shape == item["fixed"].shape == (1, *SIZE)
    assert item["disp_true"].shape == (3, *SIZE) and item["disp_true"].dtype == torch.float32
    assert item["moving_seg"].dtype == item["fixed_seg"].dtype == torch.int64
    for k in ("moving", "fixed"):
        assert 0 <= float(item[k].min()) and float(item[k].max()) <= 1
    assert len(ds.labels) >= 10 and len(ds.label_names) == len(ds.labels)
    present = set(item["moving_seg"].unique().tolist())
    assert set(ds.labels) <= present


def test_embedded_disp_true_warps_moving_onto_fixed(cohort_root):
    item = Embedded("val", img_size=SIZE, root=cohort_root, n=2)[1]
    disp = item["disp_true"][None]
    assert torch.equal(warp(item["moving_seg"][None], disp, mode="nearest"), item["fixed_seg"][None])
    before = float(lncc(item["fixed"][None], item["moving"][None], 5))
    after = float(lncc(item["fixed"][None], warp(item["moving"][None], disp), 5))
    assert after < before - 0.02
    assert fold_fraction(disp) == 0.0
    assert float(disp.norm(dim=1).max()) > 0.3


def test_embedded_is_deterministic_and_cached(cohort_root):
    ds = Embedded("val", img_size=SIZE, root=cohort_root, n=2)
    cached = ds[0]
    fresh = ds.generate(0)
    for k in fresh:
        assert torch.equal(cached[k], fresh[k]), k
    assert (ds.folder / "val_000.pt").exists() and (ds.folder / "manifest.json").exists()
    other_split = Embedded("test", img_size=SIZE, root=cohort_root, n=1)[0]
    assert not torch.equal(other_split["disp_true"], fresh["disp_true"])
    assert not torch.equal(Embedded("val", img_size=SIZE, root=cohort_root, seed=1, n=1)[0]["fixed"], fresh["fixed"])


def test_a_changed_generator_regenerates_the_cache(tmp_path, monkeypatch):
    ds = Embedded("val", img_size=SIZE, root=tmp_path, n=1)
    ds[0]
    stale = ds.folder / "val_000.pt"
    torch.save({"stale": torch.zeros(1)}, stale)
    monkeypatch.setattr(embedded_mod, "GENERATOR_VERSION", embedded_mod.GENERATOR_VERSION + 1)
    ds2 = Embedded("val", img_size=SIZE, root=tmp_path, n=1)
    assert not stale.exists()
    assert "moving" in ds2[0]


def test_embedded_works_with_worker_processes(cohort_root):
    loader = DataLoader(Embedded("val", img_size=SIZE, root=cohort_root, n=2), batch_size=2, num_workers=2)
    batch = next(iter(loader))
    assert batch["moving"].shape == (2, 1, *SIZE)


@pytest.mark.parametrize("kwargs, message", [({"split": "training"}, "split"), ({"img_size": (8, 8, 8)}, "img_size"),
                                             ({"n": 500}, "n must be")])
def test_embedded_bad_input(cohort_root, kwargs, message):
    with pytest.raises(ValueError, match=message):
        Embedded(**{"split": "val", "img_size": SIZE, "root": cohort_root, **kwargs})
    with pytest.raises(IndexError):
        Embedded("val", img_size=SIZE, root=cohort_root, n=2)[2]


def test_template_sizes():
    for img_size in [(16, 20, 24), (40, 48, 56)]:
        image, seg = mni_template(img_size)
        assert image.shape == seg.shape == (1, 1, *img_size)


def test_old_size_keyword_names_img_size():
    """`size=` was renamed `img_size=` (the config key): an old call fails and says so."""
    with pytest.raises(TypeError, match="img_size"):
        Embedded("val", size=(32, 32))
    for fn in (mni_template, mni_tissues):
        with pytest.raises(TypeError, match="img_size"):
            fn(size=(32, 32))
    with pytest.raises(TypeError, match="img_size"):
        random_smooth_disp((32, 32), size=(32, 32))
    with pytest.raises(TypeError, match="unexpected keyword argument 'sizes'"):
        Embedded("val", sizes=(32, 32))


# ---------------------------------------------------------------- IXI
SHAPE = (6, 7, 8)


def dump(path, obj):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        pickle.dump(obj, f)


def ixi_volume(seed):
    rng = np.random.default_rng(seed)
    image = rng.random(SHAPE).astype(np.float32)
    seg = rng.choice(np.array([0, 2, 3, 41, 255, 999]), size=SHAPE).astype(np.int16)
    return image, seg


@pytest.fixture
def ixi_root(tmp_path):
    dump(tmp_path / "atlas.pkl", ixi_volume(0))
    for split, n in (("Train", 3), ("Val", 2), ("Test", 1)):
        for i in range(n):
            dump(tmp_path / split / f"subject_{i}.pkl", ixi_volume(10 * i + len(split)))
    return tmp_path


def test_ixi_reads_remaps_and_keeps_the_direction(ixi_root):
    before = listing(ixi_root)
    ds = IXI(ixi_root, "train")
    assert len(ds) == 3
    item = ds[1]
    atlas_image, atlas_seg = ixi_volume(0)
    assert torch.equal(item["moving"][0], torch.from_numpy(atlas_image))          # the atlas is moving
    raw = torch.from_numpy(atlas_seg.astype(np.int64))
    expected = torch.zeros_like(raw)
    for code, index in ((2, 1), (3, 2), (41, 21), (255, 45)):                      # 0 and 999 -> 0
        expected[raw == code] = index
    assert torch.equal(item["moving_seg"][0], expected)
    assert item["fixed_seg"].dtype == torch.int64 and item["fixed"].shape == (1, *SHAPE)
    assert len(ds.labels) == 30 and ds.label_names[0] == "Left-Cerebral-White-Matter"
    assert ds.label_names[ds.labels.index(21)] == "Right-Cerebral-White-Matter"
    assert listing(ixi_root) == before                                              # nothing written


def test_ixi_ofg_subset_is_the_published_sample(tmp_path):
    dump(tmp_path / "atlas.pkl", ixi_volume(0))
    for i in range(205):
        dump(tmp_path / "Train" / f"subject_{i}.pkl", ixi_volume(1))
    ds = IXI(tmp_path, "train", subset="ofg")
    files = sorted((tmp_path / "Train").glob("*.pkl"))
    random.seed(42)
    assert ds.files == sorted(random.sample(files, 200))        # the published code sorts its sample


def test_ixi_from_environment_and_with_workers(ixi_root, monkeypatch):
    monkeypatch.setenv("OFG_IXI", str(ixi_root))
    loader = DataLoader(IXI(split="val"), batch_size=1, num_workers=2)
    assert len([b for b in loader]) == 2


class Exploit:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


@pytest.mark.parametrize("content, message", [
    ({"image": 1}, "expected a tuple of 2"),
    ((np.zeros(SHAPE, np.float32), np.zeros((6, 7, 9), np.int16) + 2), "label map has shape"),
    ((np.full(SHAPE, np.nan, np.float32), np.ones(SHAPE, np.int16) * 2), "non-finite"),
    ((np.zeros(SHAPE, np.float32), np.zeros(SHAPE, np.int16)), "empty"),
    ((np.zeros((6, 7), np.float32), np.ones((6, 7), np.int16)), "3-D image"),
    (Exploit(), "refusing to load"),
])
def test_ixi_bad_files_name_the_file(ixi_root, content, message):
    dump(ixi_root / "Train" / "subject_0.pkl", content)
    with pytest.raises(ValueError, match=message) as err:
        IXI(ixi_root, "train")[0]
    assert "subject_0.pkl" in str(err.value)


def test_ixi_missing_folders(tmp_path):
    with pytest.raises(FileNotFoundError, match="IXI train folder not found"):
        IXI(tmp_path, "train")
    with pytest.raises(ValueError, match="OFG_IXI"):
        IXI(None, "train")
    with pytest.raises(ValueError, match="split"):
        IXI(tmp_path, "Train")


# ---------------------------------------------------------------- OASIS
def nifti(path, array):
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(array, np.eye(4)), path)


@pytest.fixture
def oasis_root(tmp_path):
    rng = np.random.default_rng(0)
    for n in (1, 2, 3, 438, 439, 440, 460):
        folder = tmp_path / f"OASIS_OAS1_{n:04d}_MR1"
        nifti(folder / "aligned_norm.nii.gz", np.full(SHAPE, n / 1000, np.float32))
        nifti(folder / "aligned_seg35.nii.gz", rng.integers(0, 36, SHAPE).astype(np.int16))
    return tmp_path


def test_oasis_nifti_splits_pairs_and_partners(oasis_root):
    before = listing(oasis_root)
    val = OASIS(oasis_root, "val")
    assert len(val) == 2                                                        # 438->439, 439->440
    item = val[0]
    assert float(item["fixed"].mean()) == pytest.approx(0.438) and float(item["moving"].mean()) == pytest.approx(0.439)
    train = OASIS(oasis_root, "train", seed=3)
    assert len(train) == 3
    partners = [train[i]["id"] for i in range(3)]
    assert all(p.split("->")[0] != p.split("->")[1] for p in partners)
    assert partners == [OASIS(oasis_root, "train", seed=3)[i]["id"] for i in range(3)]
    draws = set()
    for epoch in range(6):
        train.set_epoch(epoch)
        draws.add(train[0]["id"])
    assert len(draws) == 2                                                      # both partners get drawn
    assert train.labels == tuple(range(1, 36)) and len(train.label_names) == 35
    assert listing(oasis_root) == before


def test_oasis_reads_label_names_from_the_release(oasis_root):
    (oasis_root / "seg35_labels.txt").write_text(
        "# id name\n0 Unknown\n" + "".join(f"{i} Name{i}\n" for i in range(1, 36)))
    assert OASIS(oasis_root, "val").label_names[0] == "Name1"


def test_oasis_pkl_layout(tmp_path):
    rng = np.random.default_rng(1)
    for i in range(3):
        dump(tmp_path / "Train" / f"s{i}.pkl", (rng.random(SHAPE).astype(np.float32),
                                               rng.integers(1, 36, SHAPE).astype(np.int16)))
    x, y = rng.random(SHAPE).astype(np.float32), rng.random(SHAPE).astype(np.float32)
    xs, ys = rng.integers(1, 36, SHAPE).astype(np.int16), rng.integers(1, 36, SHAPE).astype(np.int16)
    dump(tmp_path / "Val" / "p0.pkl", (x, y, xs, ys))
    item = OASIS(tmp_path, "val")[0]
    assert torch.equal(item["moving"][0], torch.from_numpy(x)) and torch.equal(item["fixed"][0], torch.from_numpy(y))
    assert torch.equal(item["fixed_seg"][0], torch.from_numpy(ys.astype(np.int64)))
    assert OASIS(tmp_path, "train")[0]["moving"].shape == (1, *SHAPE)
    dump(tmp_path / "Val" / "p0.pkl", (x, y))
    with pytest.raises(ValueError, match="tuple of 4"):
        OASIS(tmp_path, "val")[0]


# ---------------------------------------------------------------- LPBA40
@pytest.fixture
def lpba_root(tmp_path):
    rng = np.random.default_rng(2)
    for n in (1, 2, 3, 32):
        nifti(tmp_path / "images" / f"S{n:02d}.delineation.skullstripped.nii.gz",
              (rng.random(SHAPE) * 300 + 20).astype(np.float32))
        nifti(tmp_path / "labels" / f"S{n:02d}.delineation.structure.label.nii.gz",
              rng.choice(np.array([0, 21, 22, 181]), SHAPE).astype(np.int16))
    return tmp_path


def test_lpba40_subject_to_atlas_normalised(lpba_root):
    ds = LPBA40(lpba_root, "train")
    assert len(ds) == 2 and ds[0]["id"] == "S02->S01"
    item = ds[0]
    assert float(item["moving"].min()) == 0.0 and float(item["moving"].max()) == 1.0
    raw = LPBA40(lpba_root, "train", normalize=False)[0]["moving"]
    assert float(raw.max()) > 100
    assert len(ds.labels) == 54 and 181 not in ds.labels and 182 not in ds.labels
    assert ds.label_names[0] == "L superior frontal gyrus"
    assert len(LPBA40(lpba_root, "val")) == 1


def test_lpba40_missing_atlas(lpba_root):
    for p in lpba_root.rglob("S01*"):
        p.unlink()
    with pytest.raises(FileNotFoundError, match="atlas S01"):
        LPBA40(lpba_root, "train")
