"""The refiner screen (training/recipes/refiner_screen.py): each run's first evaluation goes through
the network and the later ones through the refiner; training moves the refiner alone; the loader
attaches a saved refiner."""
import pytest
import torch

import engine.models.checkpoint as checkpoint
import training.evaluate as evaluate
import training.trainer as trainer
from engine.models.checkpoint import read_weights_only
from engine.models.unet import UNet
from training.cli import main as cli_main
from training.recipes import refiner_screen as screen
from training.recipes import screen_hooks


def _net(seed=0):
    torch.manual_seed(seed)
    return UNet(8, 9, widths=(4, 4, 8, 8, 8)).eval()


def _rho(steps):
    return 1 + 99 * torch.linspace(0, 1, steps + 1)[None, :]


def test_first_evaluation_of_each_run_through_the_network_the_rest_through_the_refiner():
    net, refiner, ref = _net(0), _net(1), _net(0)
    screen.attach(net, refiner)
    x = torch.rand(1, 8, 32, 32)
    with torch.no_grad():
        base, refined = ref(x), refiner(x)
        for steps in (3, 1, 2):
            screen.set_plan(net, _rho(steps))
            outs = [net(x) for _ in range(steps)]
            assert torch.equal(outs[0], base)
            assert all(torch.equal(o, refined) for o in outs[1:])
    assert net.state_dict().keys() == ref.state_dict().keys()  # the refiner is not in the network's checkpoint
    net.train()
    assert refiner.training
    net.eval()
    assert not refiner.training


def test_the_plan_is_found_through_a_wrapper_holding_the_network():
    net, refiner = _net(0), _net(1)
    plan = screen.attach(net, refiner)
    wrapper = torch.nn.Module()
    wrapper.module = net  # as DistributedDataParallel holds it
    screen.set_plan(wrapper, _rho(3))
    assert plan.steps == 3 and plan.calls == 0
    assert screen_hooks.attached(_net(), "_refiner_plan") is None


def test_a_run_without_a_plan_is_refused():
    net = _net()
    screen.attach(net, _net(1))
    with pytest.raises(RuntimeError, match="no step plan"):
        net(torch.rand(1, 8, 32, 32))


@pytest.fixture
def restored_patches(monkeypatch):
    """The screen patches module and class attributes; the test's monkeypatch puts them back."""
    for name in ("__init__", "state_dict", "save", "resume"):
        monkeypatch.setattr(trainer.Trainer, name, getattr(trainer.Trainer, name))
    monkeypatch.setattr(trainer, "unrolled_loss", trainer.unrolled_loss)
    monkeypatch.setattr(evaluate, "run_exposure_diffusion", evaluate.run_exposure_diffusion)
    monkeypatch.setattr(checkpoint, "load_checkpoint", checkpoint.load_checkpoint)
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)  # the screen sets its own


def test_training_moves_the_refiner_alone_and_the_loader_attaches_it(tmp_path, restored_patches):
    tiny = ["--widths", "8", "8", "16", "16", "16", "--patch", "32", "--batch", "2", "--noise-model", "P+g",
            "--ratio-range", "50", "100", "--procedural", "--device", "cpu", "-q", "--epochs", "1",
            "--iters-per-epoch", "2"]
    assert cli_main(["train", "--out", str(tmp_path / "init"), "--steps", "1", *tiny]) == 0
    init = tmp_path / "init" / "model.pt"
    run = tmp_path / "run"
    assert screen.main(["--threads", "1", "--", "train", "--out", str(run), "--init", str(init), "--steps", "3",
                        *tiny]) == 0
    start, frozen = read_weights_only(init)["state_dict"], read_weights_only(run / "model.pt")["state_dict"]
    refiner = read_weights_only(run / "model.refiner.pt")
    assert all(torch.equal(frozen[k], start[k]) for k in start)
    assert any(not torch.equal(refiner[k].to(start[k].dtype), start[k]) for k in start)
    screen_hooks.patch_loader(screen.SIDE_SUFFIX, screen._attach_saved, "refiner")
    model, _, _ = checkpoint.load_checkpoint(run / "model.pt")
    assert all(torch.equal(v, refiner[k]) for k, v in model._refiner.state_dict().items())


def test_the_command_must_name_train_or_evaluate():
    with pytest.raises(SystemExit):
        screen.main(["--threads", "1"])
    with pytest.raises(SystemExit):
        screen.main(["--", "enhance", "x.ARW"])
