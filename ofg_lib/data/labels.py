"""Label tables of the paper's datasets, as the published evaluation code uses them (notebook 01)."""
from __future__ import annotations

# IXI (TransMorph's preprocessed release): the 46 FreeSurfer aseg codes present, remapped to 0..45 in this
# order (any other code becomes 0), and the 30 remapped indices that are evaluated ("VOIs").
IXI_CODES = (0, 2, 3, 4, 5, 7, 8, 10, 11, 12, 13, 14, 15, 16, 17, 18, 24, 26, 28, 30, 31, 41, 42, 43, 44, 46,
             47, 49, 50, 51, 52, 53, 54, 58, 60, 62, 63, 72, 77, 80, 85, 251, 252, 253, 254, 255)
IXI_EVALUATED = (1, 2, 3, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 18, 20, 21, 22, 23, 25, 26, 27, 28, 29,
                 30, 31, 32, 34, 36)
# FreeSurferColorLUT names of those codes (10/49 were "Thalamus-Proper" in older LUTs).
FREESURFER_NAMES = {
    0: "Unknown", 2: "Left-Cerebral-White-Matter", 3: "Left-Cerebral-Cortex", 4: "Left-Lateral-Ventricle",
    5: "Left-Inf-Lat-Vent", 7: "Left-Cerebellum-White-Matter", 8: "Left-Cerebellum-Cortex", 10: "Left-Thalamus",
    11: "Left-Caudate", 12: "Left-Putamen", 13: "Left-Pallidum", 14: "3rd-Ventricle", 15: "4th-Ventricle",
    16: "Brain-Stem", 17: "Left-Hippocampus", 18: "Left-Amygdala", 24: "CSF", 26: "Left-Accumbens-area",
    28: "Left-VentralDC", 30: "Left-vessel", 31: "Left-choroid-plexus", 41: "Right-Cerebral-White-Matter",
    42: "Right-Cerebral-Cortex", 43: "Right-Lateral-Ventricle", 44: "Right-Inf-Lat-Vent",
    46: "Right-Cerebellum-White-Matter", 47: "Right-Cerebellum-Cortex", 49: "Right-Thalamus", 50: "Right-Caudate",
    51: "Right-Putamen", 52: "Right-Pallidum", 53: "Right-Hippocampus", 54: "Right-Amygdala",
    58: "Right-Accumbens-area", 60: "Right-VentralDC", 62: "Right-vessel", 63: "Right-choroid-plexus",
    72: "5th-Ventricle", 77: "WM-hypointensities", 80: "non-WM-hypointensities", 85: "Optic-Chiasm",
    251: "CC_Posterior", 252: "CC_Mid_Posterior", 253: "CC_Central", 254: "CC_Mid_Anterior", 255: "CC_Anterior",
}
IXI_NAMES = tuple(FREESURFER_NAMES[IXI_CODES[i]] for i in IXI_EVALUATED)

# OASIS (neurite-oasis / Learn2Reg 2021 task 3), aligned_seg35: labels 1..35, all evaluated. The release ships
# seg35_labels.txt; the loader reads names from it when present and falls back to this table.
OASIS_LABELS = tuple(range(1, 36))
OASIS_NAMES = (
    "Left-Cerebral-White-Matter", "Left-Cerebral-Cortex", "Left-Lateral-Ventricle", "Left-Inf-Lat-Vent",
    "Left-Cerebellum-White-Matter", "Left-Cerebellum-Cortex", "Left-Thalamus", "Left-Caudate", "Left-Putamen",
    "Left-Pallidum", "3rd-Ventricle", "4th-Ventricle", "Brain-Stem", "Left-Hippocampus", "Left-Amygdala",
    "Left-Accumbens", "Left-Ventral-DC", "Left-Vessel", "Left-Choroid-Plexus", "Right-Cerebral-White-Matter",
    "Right-Cerebral-Cortex", "Right-Lateral-Ventricle", "Right-Inf-Lat-Vent", "Right-Cerebellum-White-Matter",
    "Right-Cerebellum-Cortex", "Right-Thalamus", "Right-Caudate", "Right-Putamen", "Right-Pallidum",
    "Right-Hippocampus", "Right-Amygdala", "Right-Accumbens", "Right-Ventral-DC", "Right-Vessel",
    "Right-Choroid-Plexus",
)

# LPBA40 (LONI probabilistic brain atlas): the OFG evaluation uses these 54 labels; 181 (cerebellum) and
# 182 (brainstem) are excluded.
LPBA40_NAMES_ALL = {
    21: "L superior frontal gyrus", 22: "R superior frontal gyrus", 23: "L middle frontal gyrus",
    24: "R middle frontal gyrus", 25: "L inferior frontal gyrus", 26: "R inferior frontal gyrus",
    27: "L precentral gyrus", 28: "R precentral gyrus", 29: "L middle orbitofrontal gyrus",
    30: "R middle orbitofrontal gyrus", 31: "L lateral orbitofrontal gyrus", 32: "R lateral orbitofrontal gyrus",
    33: "L gyrus rectus", 34: "R gyrus rectus", 41: "L postcentral gyrus", 42: "R postcentral gyrus",
    43: "L superior parietal gyrus", 44: "R superior parietal gyrus", 45: "L supramarginal gyrus",
    46: "R supramarginal gyrus", 47: "L angular gyrus", 48: "R angular gyrus", 49: "L precuneus",
    50: "R precuneus", 61: "L superior occipital gyrus", 62: "R superior occipital gyrus",
    63: "L middle occipital gyrus", 64: "R middle occipital gyrus", 65: "L inferior occipital gyrus",
    66: "R inferior occipital gyrus", 67: "L cuneus", 68: "R cuneus", 81: "L superior temporal gyrus",
    82: "R superior temporal gyrus", 83: "L middle temporal gyrus", 84: "R middle temporal gyrus",
    85: "L inferior temporal gyrus", 86: "R inferior temporal gyrus", 87: "L parahippocampal gyrus",
    88: "R parahippocampal gyrus", 89: "L lingual gyrus", 90: "R lingual gyrus", 91: "L fusiform gyrus",
    92: "R fusiform gyrus", 101: "L insular cortex", 102: "R insular cortex", 121: "L cingulate gyrus",
    122: "R cingulate gyrus", 161: "L caudate", 162: "R caudate", 163: "L putamen", 164: "R putamen",
    165: "L hippocampus", 166: "R hippocampus", 181: "cerebellum", 182: "brainstem",
}
LPBA40_LABELS = tuple(list(range(21, 35)) + list(range(41, 51)) + list(range(61, 69)) + list(range(81, 93))
                      + [101, 102, 121, 122] + list(range(161, 167)))
LPBA40_NAMES = tuple(LPBA40_NAMES_ALL[v] for v in LPBA40_LABELS)
