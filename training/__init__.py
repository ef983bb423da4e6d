"""Training of ExposureDiffusion models: data, synthesis, the multi-step loop, evaluation.

Data (``training.data`` and the modules it gathers): clean packed patches as uint16 DN
from the SID layout (long exposures decoded once, cached in memory or on disk), from sRGB
photos turned into raw, or from procedural scenes; real SID pairs for evaluation and
fine-tuning; batched normalisation and flips / transposes on the device; a fixed
synthetic hold-out set. See ``training/data.py`` for the flow.
"""
from .augment import apply_dihedral, augment_and_normalise, normalise_packed, random_dihedral
from .cache import FrameInfo, PackedRawCache
from .data import EpochTaggedSampler, MixedPatchDataset, build_training_dataset, make_patch_loader
from .patches import DataWarning, EmptyDatasetError, PackedBatch, collate_patches, pack_dn
from .sid import SIDLongDataset, SIDPairDataset, collate_pairs, read_sid_list
from .synthetic import ProceduralSceneDataset, SRGBFolderDataset, procedural_scene, srgb_to_packed_raw, synthetic_holdout

__all__ = [
    # data
    "SIDLongDataset", "SIDPairDataset", "collate_pairs", "read_sid_list",
    "SRGBFolderDataset", "ProceduralSceneDataset", "procedural_scene", "srgb_to_packed_raw", "synthetic_holdout",
    "MixedPatchDataset", "EpochTaggedSampler", "build_training_dataset", "make_patch_loader",
    "PackedBatch", "collate_patches", "pack_dn", "PackedRawCache", "FrameInfo", "DataWarning", "EmptyDatasetError",
    "normalise_packed", "random_dihedral", "apply_dihedral", "augment_and_normalise",
]
