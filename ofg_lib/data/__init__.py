"""Data: the embedded MNI152 cohort and the IXI / OASIS / LPBA40 readers (notebook 01).

Every dataset yields dicts with `moving`, `fixed` (float32, (1, D, H, W)) and, where the data have them,
`moving_seg`, `fixed_seg` (int64, (1, D, H, W)); `Embedded` adds `disp_true` (3, D, H, W), voxels.
Each has `labels` (the evaluated label values) and `label_names` (same order).
"""
from .embedded import Embedded
from .real import IXI, LPBA40, OASIS
from .template import LABEL_NAMES, mni_template, random_smooth_disp

__all__ = ["Embedded", "IXI", "OASIS", "LPBA40", "LABEL_NAMES", "mni_template", "random_smooth_disp"]
