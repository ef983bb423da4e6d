"""Checkpoints and configs refused before anything is allocated (issue 15, item 4): absurd
widths or block counts, expanded (zero-stride) tensors, more parameters than the limit.

Each test watches the real model constructors: building a backbone anywhere but on the
``meta`` device (shapes only) before the refusal fails the test, so the old behaviour
(allocate first, complain later, or never finish) shows as a failure instead of eating
the machine's memory."""
import numpy as np
import pytest
import torch

import engine.models.nafnet as nafnet_mod
import engine.models.unet as unet_mod
from engine.models.backbones import (MAX_NAFNET_BLOCKS, MAX_PARAMETERS, MAX_UNET_WIDTH, BackboneConfig, NAFNet,
                                     UNet)
from engine.models.checkpoint import CheckpointError, load_checkpoint
from engine.models.nafnet import nafnet_parameters
from engine.models.unet import unet_parameters

SMALL = (8, 8, 16, 16, 16)


@pytest.fixture
def no_real_build(monkeypatch):
    """Fail when a backbone is constructed off the meta device."""
    for cls in (unet_mod.UNet, nafnet_mod.NAFNet):
        original = cls.__init__

        def guarded(self, *a, _original=original, _name=cls.__name__, **kw):
            if torch.get_default_device().type != "meta":
                raise AssertionError(f"{_name} built (allocated) before the checkpoint was refused")
            _original(self, *a, **kw)

        monkeypatch.setattr(cls, "__init__", guarded)


def ours(path, config: dict, state_dict: dict):
    torch.save({"format": "exposure-diffusion", "version": 1, "config": config, "state_dict": state_dict,
                "meta": {}}, path)
    return path


def unet_config(widths, **options):
    return {"arch": "unet", "out_channels": 9, "with_photon": True, "concat_origin": False,
            "options": {"widths": list(widths), **options}}


def test_our_format_with_absurd_widths(tmp_path, no_real_build):
    sd = {"conv1_1.weight": torch.zeros(1)}
    path = ours(tmp_path / "wide.pt", unet_config((32, 64, 128, 256, 12000)), sd)
    assert path.stat().st_size < 4096
    with pytest.raises(CheckpointError, match=rf"wide.pt: invalid 'config': unet widths must be 5 integers in "
                                              rf"\[1, {MAX_UNET_WIDTH}\], got \(32, 64, 128, 256, 12000\)"):
        load_checkpoint(path)


def test_our_format_with_a_million_nafnet_blocks(tmp_path, no_real_build):
    config = {"arch": "nafnet", "out_channels": 9, "with_photon": True, "concat_origin": False,
              "options": {"middle_blocks": 10**6}}
    path = ours(tmp_path / "deep.pt", config, {"intro.weight": torch.zeros(1)})
    with pytest.raises(CheckpointError, match=rf"deep.pt: invalid 'config': nafnet middle_blocks must be block "
                                              rf"counts in \[0, {MAX_NAFNET_BLOCKS}\], got 1000000"):
        load_checkpoint(path)


def test_our_format_config_that_contradicts_its_tensors_is_refused_before_building(tmp_path, no_real_build):
    """A sane config whose stored tensors do not fit it: compared on the meta device."""
    sd = {"conv1_1.weight": torch.zeros(8, 8, 3, 3)}
    path = ours(tmp_path / "mismatch.pt", unet_config(SMALL), sd)
    with pytest.raises(CheckpointError, match=r"mismatch.pt: weights do not fit the UNet they describe: missing"):
        load_checkpoint(path)


def _public_unet_state(widths=SMALL):
    torch.manual_seed(0)
    return {k: v.clone() for k, v in UNet(8, 9, widths).state_dict().items()}


def test_public_file_with_expanded_tensors_of_absurd_width(tmp_path, no_real_build):
    """A few-KB public file whose zero-stride tensors claim a 12000-wide bottom level."""
    w = (32, 64, 128, 256, 12000)
    with torch.device("meta"):
        shapes = {k: v.shape for k, v in UNet(8, 9, w).state_dict().items()}
    sd = {k: torch.zeros(1).expand(s) if len(s) > 1 else torch.zeros(s) for k, s in shapes.items()}
    torch.save({"netG": sd, "epoch": 1}, tmp_path / "expanded.pt")
    assert (tmp_path / "expanded.pt").stat().st_size < 200_000
    with pytest.raises(CheckpointError, match=r"expanded.pt: 'conv\w+\.weight' has shape .* weights must be "
                                              r"stored densely"):
        load_checkpoint(tmp_path / "expanded.pt")


def test_public_file_with_one_expanded_tensor(tmp_path):
    """Even at a sane size, a zero-stride tensor is not a stored weight."""
    sd = _public_unet_state()
    sd["conv3_2.weight"] = torch.full((1, 1, 1, 1), 0.01).expand(sd["conv3_2.weight"].shape)
    torch.save({"netG": sd}, tmp_path / "view.pt")
    with pytest.raises(CheckpointError, match=r"view.pt: 'conv3_2.weight' has shape \(16, 16, 3, 3\) \(9216 bytes\) "
                                              r"but the file stores 4 bytes for it"):
        load_checkpoint(tmp_path / "view.pt")
    sd["conv3_2.weight"] = sd["conv3_2.weight"].contiguous()  # the same values stored densely load
    torch.save({"netG": sd}, tmp_path / "dense.pt")
    model, config, _ = load_checkpoint(tmp_path / "dense.pt")
    assert config.options["widths"] == SMALL


def _deadline(seconds):
    """Fail (instead of hanging) when the block does not finish in time."""
    import contextlib
    import signal

    @contextlib.contextmanager
    def ctx():
        def expire(*_):
            raise AssertionError(f"still running after {seconds} s: the refusal did not come first")

        previous = signal.signal(signal.SIGALRM, expire)
        signal.alarm(seconds)
        try:
            yield
        finally:
            signal.alarm(0)
            signal.signal(signal.SIGALRM, previous)

    return ctx()


def test_public_nafnet_keys_with_absurd_level_index(tmp_path):
    """A key ``encoders.999999999...`` must not make the loader count a billion levels."""
    torch.manual_seed(0)
    sd = dict(NAFNet(8, 9, width=4, enc_blocks=(1,), middle_blocks=1, dec_blocks=(1,)).state_dict())
    sd["encoders.999999999.0.beta"] = torch.zeros(1, 4, 1, 1)
    torch.save({"netG": sd}, tmp_path / "levels.pt")
    with _deadline(20), pytest.raises(CheckpointError, match=r"levels.pt: NAFNet keys describe 1000000000 "
                                                             r"encoder / decoder levels, above the limit of 6"):
        load_checkpoint(tmp_path / "levels.pt")


def test_parameter_limit_and_integer_options():
    with pytest.raises(ValueError, match=rf"would hold \d+ M parameters, above the limit of "
                                         rf"{MAX_PARAMETERS // 10**6} M"):
        BackboneConfig(options={"widths": (4096,) * 5})
    with pytest.raises(ValueError, match=r"unet option widths\[4\] must be an integer, got 16.5"):
        BackboneConfig(options={"widths": (8, 8, 16, 16, 16.5)})
    with pytest.raises(ValueError, match="unet option widths must have 5 levels, got 6"):
        BackboneConfig(options={"widths": (8,) * 6})
    with pytest.raises(ValueError, match="nafnet option enc_blocks must have 1 to 6 levels, got 7"):
        BackboneConfig(arch="nafnet", options={"enc_blocks": (1,) * 7, "dec_blocks": (1,) * 7})
    cfg = BackboneConfig(options={"widths": tuple(np.int64(w) for w in SMALL)})  # numpy integers are integers
    assert cfg.options["widths"] == SMALL and all(type(w) is int for w in cfg.options["widths"])


@pytest.mark.parametrize("arch, options", [("unet", {"widths": SMALL}), ("unet", {}),
                                           ("nafnet", {}), ("nafnet", dict(width=6, enc_blocks=(1, 0, 3),
                                                                           middle_blocks=2, dec_blocks=(2, 1, 0)))])
@pytest.mark.parametrize("cin, cout", [(4, 4), (12, 9)])
def test_parameter_counts_match_the_built_models(arch, options, cin, cout):
    cfg = BackboneConfig.from_channels(arch, cin, cout, **options)
    with torch.device("meta"):
        built = sum(p.numel() for p in cfg.build().parameters())
    assert cfg.n_parameters == built
    counted = unet_parameters(cin, cout, **cfg.options) if arch == "unet" else nafnet_parameters(cin, cout, **cfg.options)
    assert counted == built
