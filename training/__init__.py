"""Training of ExposureDiffusion models: data, synthesis, the multi-step loop, evaluation.

Data (``training.data`` and the modules it gathers): clean packed patches as uint16 DN
from the SID layout (long exposures decoded once, cached in memory or on disk), from sRGB
photos turned into raw, or from procedural scenes; real SID pairs for evaluation and
fine-tuning; batched normalisation and flips / transposes on the device; a fixed
synthetic hold-out set. See ``training/data.py`` for the flow.
"""
# Imported on first use (PEP 562): the ``exposure-diffusion`` program's entry point is
# ``training.cli:main``, and importing the data modules (torch) with the package would cost
# ``--help`` seconds (issue 22, item 6). ``from training import X`` works as before.
from engine.lazy import lazy_names

_LAZY = {
    "apply_dihedral": ".augment", "augment_and_normalise": ".augment", "normalise_packed": ".augment",
    "random_dihedral": ".augment", "FrameInfo": ".cache", "PackedRawCache": ".cache", "EpochTaggedSampler": ".data",
    "MixedPatchDataset": ".data", "build_training_dataset": ".data", "make_patch_loader": ".data",
    "DataWarning": ".patches", "EmptyDatasetError": ".patches", "PackedBatch": ".patches",
    "collate_patches": ".patches", "pack_dn": ".patches", "SIDLongDataset": ".sid", "SIDPairDataset": ".sid",
    "collate_pairs": ".sid", "read_sid_list": ".sid", "ProceduralSceneDataset": ".synthetic",
    "SRGBFolderDataset": ".synthetic", "procedural_scene": ".synthetic", "srgb_to_packed_raw": ".synthetic",
    "synthetic_holdout": ".synthetic",
}

__getattr__, __dir__ = lazy_names(__name__, _LAZY, globals())

__all__ = [
    # data
    "SIDLongDataset", "SIDPairDataset", "collate_pairs", "read_sid_list",
    "SRGBFolderDataset", "ProceduralSceneDataset", "procedural_scene", "srgb_to_packed_raw", "synthetic_holdout",
    "MixedPatchDataset", "EpochTaggedSampler", "build_training_dataset", "make_patch_loader",
    "PackedBatch", "collate_patches", "pack_dn", "PackedRawCache", "FrameInfo", "DataWarning", "EmptyDatasetError",
    "normalise_packed", "random_dihedral", "apply_dihedral", "augment_and_normalise",
]
