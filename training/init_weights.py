"""Starting a run from another checkpoint's weights (``train --init``).

A run may add input groups (SPEC §4: the photon channel, the origin ``A_T``) that the init
checkpoint was trained without. ``init_state_dict`` then widens the backbone's first
convolution with zero weights for the new input channels: the widened network computes
exactly what the init network computed, at every step of the loop (the new inputs are
multiplied by zero), and training starts from that function instead of from scratch. This is
how the issue-14 origin runs started from the 8-channel one-step twin (whether the later steps
learn to use ``A_T`` is a matter of budget: in 1000-1150 CPU steps they did not; model card).

``origin_share`` s > 0 starts the origin group elsewhere: its columns are s times the init's
state columns and the state columns keep (1 - s) of them. At the first step the state *is* the
origin (``A_T``), so that network too computes exactly what the init computed there; at the
later steps it sees ``(1 - s) x state + s x A_T`` through those columns, the noisy input the
later states have lost (a third of it at s = 1/3), and training decides from there how much of
it to keep, instead of having to grow it from zero.

Anything else that differs (architecture, sizes, output head, or an input group the run
drops) is refused with a ``ValueError`` naming both configurations.
"""
from __future__ import annotations

import torch

from engine.models.backbones import BackboneConfig
from engine.models.unet import PLANES


def _input_groups(config: BackboneConfig) -> list[str]:
    """The network input's 4-channel groups in their SPEC §4 order."""
    return ["state"] + (["photon"] if config.with_photon else []) + (["origin"] if config.concat_origin else [])


def init_state_dict(init_state: dict[str, torch.Tensor], init_config: BackboneConfig,
                    target_config: BackboneConfig, target_state: dict[str, torch.Tensor],
                    origin_share: float = 0.0) -> dict[str, torch.Tensor]:
    """The init weights for a model of ``target_config``.

    ``init_state`` / ``target_state``: state dicts of the init model and of a freshly built
    target model (for the shapes). The same configuration: ``init_state`` as it is. A target
    that adds input groups: every tensor copied; the one tensor whose input-channel dimension
    (dim 1) grows from ``init_config.in_channels`` to ``target_config.in_channels`` (the first
    convolution's weight, ``[C_out, C_in, kh, kw]``) gets the init's columns at its groups'
    new positions and zeros for the added groups; with ``origin_share`` s in (0, 1] an added
    origin group gets s times the state columns instead, and the state columns 1 - s of them
    (module docstring).
    """
    origin_share = float(origin_share)
    if not 0.0 <= origin_share <= 1.0:
        raise ValueError(f"origin_share must be in [0, 1], got {origin_share:g}")
    if origin_share and (init_config.concat_origin or not target_config.concat_origin):
        raise ValueError("origin_share starts an origin group the run adds: the init checkpoint must be without "
                         "the origin and the run with it (concat_origin)")
    if init_config == target_config:
        return dict(init_state)
    same_rest = (init_config.arch == target_config.arch and init_config.options == target_config.options
                 and init_config.out_channels == target_config.out_channels)
    old, new = _input_groups(init_config), _input_groups(target_config)
    if not same_rest or not set(old) <= set(new):
        raise ValueError(f"cannot start a {target_config} run from a {init_config} checkpoint: only input groups "
                         f"may be added (photon, origin); architecture, sizes and head must match")
    if set(init_state) != set(target_state):
        raise ValueError("the init checkpoint's parameters do not match the run's backbone")
    out, widened = {}, []
    for key, tensor in init_state.items():
        shape = target_state[key].shape
        if tensor.shape == shape:
            out[key] = tensor
            continue
        if (tensor.dim() < 2 or tensor.shape[1] != init_config.in_channels or shape[1] != target_config.in_channels
                or tensor.shape[:1] + tensor.shape[2:] != shape[:1] + shape[2:]):
            raise ValueError(f"parameter {key}: shape {tuple(tensor.shape)} in the init checkpoint, "
                             f"{tuple(shape)} in the run; only the input channels may grow")
        wide = torch.zeros(shape, dtype=tensor.dtype)
        for g, group in enumerate(old):
            at = new.index(group)
            wide[:, at * PLANES:(at + 1) * PLANES] = tensor[:, g * PLANES:(g + 1) * PLANES]
        if origin_share and "origin" not in old and "origin" in new:
            state, origin = new.index("state"), new.index("origin")
            columns = tensor[:, 0:PLANES]  # the init's state group (always first)
            wide[:, state * PLANES:(state + 1) * PLANES] = (1.0 - origin_share) * columns
            wide[:, origin * PLANES:(origin + 1) * PLANES] = origin_share * columns
        out[key] = wide
        widened.append(key)
    if len(widened) != 1:
        raise ValueError(f"expected exactly one input layer to widen, found {widened or 'none'}")
    return out
