"""Data: the MNI152 template shipped by nilearn, and pairs made from it (notebooks 01, 02 and 04).

The embedded cohort and the IXI / OASIS / LPBA40 readers are the data issue's work; until then
`template_pair` makes one atlas-to-subject pair with a known displacement.
"""
from .template import mni_template, random_smooth_disp, template_pair

__all__ = ["mni_template", "random_smooth_disp", "template_pair"]
