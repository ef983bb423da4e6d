"""training.init_weights: a run that adds input groups starts from exactly the init model's
function (every step of the loop), and anything else that differs is refused by name."""
import pytest
import torch

from engine.inference.loop import exposure_schedule, run_exposure_diffusion
from engine.models.backbones import BackboneConfig
from engine.models.checkpoint import save_checkpoint
from kernels import synthesize_noise
from training.init_weights import init_state_dict
from training.trainer import TrainConfig, Trainer

from .test_trainer import ToyPatches

WIDTHS = {"widths": (8, 8, 16, 16, 16)}


def _widened(init_config, target_config, seed=0):
    torch.manual_seed(seed)
    init = init_config.build()
    with torch.no_grad():  # non-zero biases everywhere, so a misplaced column shows
        for p in init.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    target = target_config.build()
    target.load_state_dict(init_state_dict(init.state_dict(), init_config, target_config, target.state_dict()))
    return init.eval(), target.eval()


def _first_input(clean, ratio, K, *, with_photon, concat_origin, seed=3):
    return synthesize_noise(clean, "P+G+r+u", ratio=ratio, K=K, sigma_g=3.0, sigma_TL=2.0, lam=0.1, sigma_r=0.5,
                            with_photon=with_photon, concat_origin=concat_origin,
                            generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("old,new", [((True, False), (True, True)), ((False, False), (True, True)),
                                     ((False, False), (False, True)), ((False, True), (True, True))])
@pytest.mark.parametrize("arch", ["unet", "nafnet"])
def test_added_groups_keep_the_function_at_every_step(old, new, arch):
    options = WIDTHS if arch == "unet" else {"width": 8, "enc_blocks": (1, 1), "middle_blocks": 1,
                                             "dec_blocks": (1, 1)}
    init_config = BackboneConfig(arch=arch, with_photon=old[0], concat_origin=old[1], options=options)
    target_config = BackboneConfig(arch=arch, with_photon=new[0], concat_origin=new[1], options=options)
    init, target = _widened(init_config, target_config)
    clean = torch.rand(2, 4, 32, 32) * 0.5 + 0.02
    ratio, K = torch.tensor([100.0, 300.0]), torch.tensor([2.0, 0.7])
    rho = exposure_schedule(ratio, 3)
    results = []
    for net, config in ((init, init_config), (target, target_config)):
        first = _first_input(clean, ratio, K, with_photon=config.with_photon, concat_origin=config.concat_origin)
        with torch.no_grad():
            results.append(run_exposure_diffusion(net, first, ratio=ratio, K=K, rho=rho,
                                                  with_photon=config.with_photon,
                                                  concat_origin=config.concat_origin,
                                                  generator=torch.Generator().manual_seed(5)))
    torch.testing.assert_close(results[1], results[0], rtol=0, atol=1e-6)
    assert not torch.equal(results[0], clean)  # a real network, not the identity on the data


def test_state_columns_land_in_their_groups():
    init_config = BackboneConfig(with_photon=False, concat_origin=True, options=WIDTHS)  # state, origin
    target_config = BackboneConfig(with_photon=True, concat_origin=True, options=WIDTHS)  # state, photon, origin
    init, target = _widened(init_config, target_config)
    w_old, w_new = init.conv1_1.weight, target.conv1_1.weight
    assert torch.equal(w_new[:, 0:4], w_old[:, 0:4])
    assert torch.equal(w_new[:, 4:8], torch.zeros_like(w_new[:, 4:8]))
    assert torch.equal(w_new[:, 8:12], w_old[:, 4:8])


@pytest.mark.parametrize("target,match", [
    (BackboneConfig(with_photon=False, options=WIDTHS), "only input groups may be added"),
    (BackboneConfig(out_channels=4, options=WIDTHS), "only input groups may be added"),
    (BackboneConfig(options={"widths": (8, 8, 16, 16, 32)}), "only input groups may be added"),
    (BackboneConfig(arch="nafnet", options={"width": 8}), "only input groups may be added"),
])
def test_other_differences_are_refused(target, match):
    init_config = BackboneConfig(options=WIDTHS)  # state + photon, 9-channel head
    init = init_config.build()
    with pytest.raises(ValueError, match=match):
        init_state_dict(init.state_dict(), init_config, target, target.build().state_dict())


def test_trainer_starts_a_wider_run_from_a_checkpoint(tmp_path):
    init_config = BackboneConfig(options=WIDTHS)
    torch.manual_seed(1)
    init = init_config.build()
    save_checkpoint(init, init_config, tmp_path / "init.pt")
    cfg = TrainConfig(widths=WIDTHS["widths"], concat_origin=True, patch=32, batch=2, steps=2, epochs=1,
                      iters_per_epoch=1, noise_model="P+g", ratio_range=(50, 100), init=str(tmp_path / "init.pt"))
    trainer = Trainer(cfg, ToyPatches(), tmp_path / "run", device="cpu", progress=False)
    weight = trainer.model.conv1_1.weight
    assert weight.shape[1] == 12
    assert torch.equal(weight[:, :8], init.conv1_1.weight)
    assert torch.count_nonzero(weight[:, 8:]) == 0
    trainer.fit()  # the zero columns get gradients like any other weight
    assert torch.count_nonzero(trainer.model.conv1_1.weight[:, 8:]) > 0

    narrow = TrainConfig(widths=WIDTHS["widths"], with_photon=False, patch=32, batch=2, steps=2, epochs=1,
                         iters_per_epoch=1, noise_model="P+g", ratio_range=(50, 100), init=str(tmp_path / "init.pt"))
    with pytest.raises(ValueError, match="init checkpoint .*init.pt: cannot start"):
        Trainer(narrow, ToyPatches(), tmp_path / "run2", device="cpu", progress=False)


def test_an_origin_started_from_the_state_keeps_the_first_step_only():
    """``origin_share`` s: the origin columns are s x the init's state columns, the state keeps
    1 - s; the first estimate (state = A_T) is the init's, the later ones see A_T and differ."""
    init_config = BackboneConfig(options=WIDTHS)
    target_config = BackboneConfig(concat_origin=True, options=WIDTHS)
    torch.manual_seed(0)
    init = init_config.build()
    with torch.no_grad():
        for p in init.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    target = target_config.build()
    target.load_state_dict(init_state_dict(init.state_dict(), init_config, target_config, target.state_dict(),
                                           origin_share=0.25))
    w_old, w_new = init.conv1_1.weight, target.conv1_1.weight
    torch.testing.assert_close(w_new[:, 0:4], 0.75 * w_old[:, 0:4])
    assert torch.equal(w_new[:, 4:8], w_old[:, 4:8])
    torch.testing.assert_close(w_new[:, 8:12], 0.25 * w_old[:, 0:4])
    clean = torch.rand(2, 4, 32, 32) * 0.5 + 0.02
    ratio, K = torch.tensor([100.0, 300.0]), torch.tensor([2.0, 0.7])
    outs = {}
    for steps in (1, 3):
        for net, config in ((init.eval(), init_config), (target.eval(), target_config)):
            first = _first_input(clean, ratio, K, with_photon=True, concat_origin=config.concat_origin)
            with torch.no_grad():
                outs[steps, config.concat_origin] = run_exposure_diffusion(
                    net, first, ratio=ratio, K=K, rho=exposure_schedule(ratio, steps), with_photon=True,
                    concat_origin=config.concat_origin, stochastic=False)
    torch.testing.assert_close(outs[1, True], outs[1, False], rtol=0, atol=1e-5)
    assert (outs[3, True] - outs[3, False]).abs().max() > 1e-3
    with pytest.raises(ValueError, match=r"origin_share must be in \[0, 1\], got 1.5"):
        init_state_dict(init.state_dict(), init_config, target_config, target.state_dict(), origin_share=1.5)
    with pytest.raises(ValueError, match="the init checkpoint must be without the origin"):
        init_state_dict(target.state_dict(), target_config, target_config, target.state_dict(), origin_share=0.25)
    with pytest.raises(ValueError, match="origin_share .* needs concat_origin and an init checkpoint"):
        TrainConfig(widths=WIDTHS["widths"], patch=32, origin_share=0.3)
