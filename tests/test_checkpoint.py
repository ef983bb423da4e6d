"""Checkpoints: public and own format round trips, option inference, safe loading,
every refusal with its message, atomic writes."""
import io
import os
import pickle
import re

import pytest
import torch

import engine.models.checkpoint as ckpt
from engine.models.backbones import BackboneConfig, NAFNet, UNet
from engine.models.checkpoint import CheckpointError, export_public, load_checkpoint, save_checkpoint

pytestmark = pytest.mark.usefixtures("one_thread")

SMALL_NAF = dict(width=8, enc_blocks=(1, 2), middle_blocks=3, dec_blocks=(2, 1))




def randomise_(model, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=g)
            p.copy_(noise * (1.0 / p[0].numel()) ** 0.5 if p.dim() == 4 and p.shape[0] > 1 else 0.3 * noise)
    return model.eval()


def same_outputs(a, b, cin, size=(32, 48)):
    x = torch.rand(2, cin, *size, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        return torch.equal(a(x), b(x))


def public_save(model, path, *, with_optimizer=True, prefix=""):
    """What the public ExposureDiffusion/ELD training code writes."""
    state = {"netG": {prefix + k: v for k, v in model.state_dict().items()}, "epoch": 300,
             "iterations": 386400}
    if with_optimizer:
        opt = torch.optim.Adam(model.parameters(), lr=1e-4)
        model(torch.rand(1, model.in_channels, 16, 16)).mean().backward()
        opt.step()
        model.zero_grad()
        state["opt_g"] = opt.state_dict()
    torch.save(state, path)


# ------------------------------------------------------------------ round trips
@pytest.mark.parametrize("cin,cout,wp,co", [(12, 9, True, True), (8, 9, True, False), (4, 4, False, False),
                                            (4, 9, False, False)])
def test_public_unet_round_trip(tmp_path, cin, cout, wp, co):
    model = randomise_(UNet(cin, cout))
    with_optimizer = cin == 12  # one case carries a real Adam state ('opt_g'), as the public code saves
    public_save(model, tmp_path / "model_300_00386400.pt", with_optimizer=with_optimizer)
    loaded, cfg, meta = load_checkpoint(tmp_path / "model_300_00386400.pt")
    assert isinstance(loaded, UNet) and not loaded.training
    assert (cfg.arch, cfg.in_channels, cfg.out_channels, cfg.with_photon, cfg.concat_origin,
            cfg.adaptive_head) == ("unet", cin, cout, wp, co, cout == 9)
    assert meta == {"epoch": 300, "iterations": 386400, "has_optimizer_state": with_optimizer,
                    "format": "public", "stored_dtype": "float32"}
    assert same_outputs(model, loaded, cin)


def test_public_eight_channels_resolved_by_expect(tmp_path):
    public_save(randomise_(UNet(8, 9)), tmp_path / "p.pt", with_optimizer=False)
    _, cfg, meta = load_checkpoint(tmp_path / "p.pt", expect={"concat_origin": True})
    assert (cfg.with_photon, cfg.concat_origin) == (False, True)
    assert meta["has_optimizer_state"] is False


@pytest.mark.parametrize("kw", [SMALL_NAF, {}])
def test_public_nafnet_round_trip_infers_blocks(tmp_path, kw):
    model = randomise_(NAFNet(12, 9, **kw))
    public_save(model, tmp_path / "naf.pt", with_optimizer=False)
    loaded, cfg, _ = load_checkpoint(tmp_path / "naf.pt")
    assert isinstance(loaded, NAFNet) and cfg.arch == "nafnet"
    assert cfg.options == model.options() == loaded.options()
    if not kw:
        assert cfg.options == {"width": 16, "enc_blocks": (2, 2, 4, 4), "middle_blocks": 12,
                               "dec_blocks": (2, 2, 2, 2)}
    assert same_outputs(model, loaded, 12, size=(16, 32))


@pytest.mark.parametrize("wrap", ["module", "bare", "state_dict", "compiled"])
def test_dataparallel_prefix_and_bare_state_dicts(tmp_path, wrap):
    model = randomise_(UNet(4, 9))
    sd = model.state_dict()
    obj = {"module": {"netG": {"module." + k: v for k, v in sd.items()}},
           "bare": sd,
           "state_dict": {"state_dict": sd, "step": 3},
           "compiled": {"netG": {"module._orig_mod." + k: v for k, v in sd.items()}}}[wrap]
    torch.save(obj, tmp_path / "c.pt")
    loaded, cfg, meta = load_checkpoint(tmp_path / "c.pt")
    assert cfg.in_channels == 4
    assert meta["format"] == ("public" if wrap in ("module", "compiled") else "state_dict")
    assert same_outputs(model, loaded, 4)


@pytest.mark.parametrize("config", [BackboneConfig.from_channels("unet", 8, 9, concat_origin=True),
                                    BackboneConfig.from_channels("nafnet", 12, 4, **SMALL_NAF),
                                    BackboneConfig.from_channels("unet", 4, 9, widths=(8, 16, 16, 32, 32))])
def test_own_format_round_trip(tmp_path, config):
    model = randomise_(config.build())
    meta = {"noise": "P+G+r+u", "epoch": 12, "lr": 1e-4, "steps": [1, 2], "note": None}
    save_checkpoint(model, config, tmp_path / "ours.pt", meta=meta)
    raw = torch.load(tmp_path / "ours.pt", weights_only=True)
    assert raw["format"] == "exposure-diffusion" and raw["version"] == 1
    assert raw["config"]["in_channels"] == config.in_channels
    loaded, cfg, got_meta = load_checkpoint(tmp_path / "ours.pt", expect={"in_channels": config.in_channels})
    assert cfg == config  # 8 ch with origin survives: options are explicit
    assert got_meta == {**meta, "format": "exposure-diffusion", "stored_dtype": "float32"}
    assert same_outputs(model, loaded, config.in_channels, size=(16, 32))


def test_export_public_layout_and_round_trip(tmp_path):
    model = randomise_(UNet(12, 9)).to(memory_format=torch.channels_last)
    export_public(model, tmp_path / "pub.pt", epoch=5, iterations=77)
    raw = torch.load(tmp_path / "pub.pt", weights_only=True)
    assert sorted(raw) == ["epoch", "iterations", "netG"] and (raw["epoch"], raw["iterations"]) == (5, 77)
    assert set(raw["netG"]) == set(UNet(12, 9).state_dict())
    assert all(t.is_contiguous() for t in raw["netG"].values())
    loaded, cfg, _ = load_checkpoint(tmp_path / "pub.pt")
    assert cfg.in_channels == 12
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in loaded.state_dict().items())


def test_half_precision_weights_and_file_objects():
    model = randomise_(UNet(4, 9)).half()
    buf = io.BytesIO()
    torch.save({"netG": model.state_dict(), "epoch": 1, "iterations": 2}, buf)
    buf.seek(0)
    loaded, _, meta = load_checkpoint(buf, map_location=torch.device("cpu"))
    assert meta["stored_dtype"] == "float16" and loaded.conv1_1.weight.dtype == torch.float32
    assert torch.equal(loaded.conv5_2.weight, model.conv5_2.weight.float())


# ------------------------------------------------------------------ refusals
@pytest.fixture
def public_file(tmp_path):
    path = tmp_path / "good.pt"
    public_save(randomise_(UNet(4, 9)), path, with_optimizer=False)
    return path


def test_refuses_garbage(tmp_path):
    path = tmp_path / "garbage.pt"
    path.write_bytes(bytes(range(256)) * 8)
    with pytest.raises(CheckpointError, match=r"garbage\.pt: not a readable"):
        load_checkpoint(path)


def test_refuses_truncated(tmp_path, public_file):
    data = public_file.read_bytes()
    for cut in (len(data) // 2, len(data) - 10, 64):
        path = tmp_path / f"trunc{cut}.pt"
        path.write_bytes(data[:cut])
        with pytest.raises(CheckpointError, match=rf"trunc{cut}\.pt: not a readable .*(truncated|corrupted)"):
            load_checkpoint(path)


def test_refuses_empty_and_missing(tmp_path):
    (tmp_path / "empty.pt").write_bytes(b"")
    with pytest.raises(CheckpointError, match=r"empty\.pt: the file is empty"):
        load_checkpoint(tmp_path / "empty.pt")
    with pytest.raises(CheckpointError, match=r"not-there\.pt: no such file"):
        load_checkpoint(tmp_path / "not-there.pt")
    with pytest.raises(CheckpointError, match="is a directory"):
        load_checkpoint(tmp_path)
    with pytest.raises(CheckpointError, match=r"<BytesIO>: not a readable"):
        load_checkpoint(io.BytesIO(b""))


@pytest.mark.parametrize("obj,msg", [
    ({"epoch": 3, "iterations": 10}, r"fits no known format \(top-level keys: epoch, iterations\)"),
    ([1, 2, 3], r"expected a dict, found a list"),
    ({"netG": {"a": 1}}, r"'netG' is not a non-empty mapping of names to tensors"),
    ({"format": "exposure-diffusion", "version": 7}, r"format version 7 is not supported"),
    ({"format": "exposure-diffusion", "version": 1, "state_dict": {"x": torch.ones(1)}},
     r"'exposure-diffusion' format but the 'config' entry is missing"),
])
def test_refuses_unknown_containers(tmp_path, obj, msg):
    torch.save(obj, tmp_path / "odd.pt")
    with pytest.raises(CheckpointError, match=r"odd\.pt: " + msg):
        load_checkpoint(tmp_path / "odd.pt")


def test_error_carries_source_and_reason_and_pickles(tmp_path):
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(tmp_path / "gone.pt")
    err = info.value
    assert isinstance(err, ValueError)
    assert (err.source, err.reason) == (str(tmp_path / "gone.pt"), "no such file")
    assert str(err) == f"checkpoint {tmp_path / 'gone.pt'}: no such file"
    again = pickle.loads(pickle.dumps(err))
    assert type(again) is CheckpointError and str(again) == str(err)


def test_refuses_unknown_key_layout(tmp_path):
    torch.save({"netG": {"encoder.0.weight": torch.ones(3, 3, 3, 3), "head.bias": torch.ones(3)}},
               tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match=r"unknown key layout \(top-level modules: encoder, head\)"):
        load_checkpoint(tmp_path / "other.pt")


def test_refuses_missing_unexpected_and_mismatched_tensors(tmp_path):
    sd = randomise_(UNet(4, 9)).state_dict()
    missing = {k: v for k, v in sd.items() if k != "conv5_2.bias"}
    torch.save({"netG": missing}, tmp_path / "missing.pt")
    with pytest.raises(CheckpointError, match=r"missing\.pt: .*missing \(1\): conv5_2\.bias"):
        load_checkpoint(tmp_path / "missing.pt")
    torch.save({"netG": {**sd, "conv3_1.weight": torch.zeros(128, 32, 3, 3)}}, tmp_path / "shape.pt")
    with pytest.raises(CheckpointError, match=r"shape mismatch \(1\): conv3_1\.weight: checkpoint "
                                              r"\(128, 32, 3, 3\) vs model \(128, 64, 3, 3\)"):
        load_checkpoint(tmp_path / "shape.pt")
    torch.save({"netG": {**sd, "conv1_1.extra": torch.zeros(1)}}, tmp_path / "extra.pt")
    with pytest.raises(CheckpointError, match=r"unexpected \(1\): conv1_1\.extra"):
        load_checkpoint(tmp_path / "extra.pt")
    bad = dict(sd)
    bad["conv4_1.weight"] = sd["conv4_1.weight"].clone()
    bad["conv4_1.weight"][0, 0, 0, 0] = float("nan")
    torch.save({"netG": bad}, tmp_path / "nan.pt")
    with pytest.raises(CheckpointError, match=r"non-finite values \(NaN/inf\) in conv4_1\.weight"):
        load_checkpoint(tmp_path / "nan.pt")


def test_refuses_unsupported_channel_counts(tmp_path):
    torch.save({"netG": UNet(6, 9).state_dict()}, tmp_path / "six.pt")
    with pytest.raises(CheckpointError, match=r"six\.pt: unet with 6 -> 9 channels is not a supported"):
        load_checkpoint(tmp_path / "six.pt")
    torch.save({"netG": UNet(4, 3).state_dict()}, tmp_path / "rgb.pt")
    with pytest.raises(CheckpointError, match=r"4 -> 3 channels is not a supported.*9 .*or 4 channels, got 3"):
        load_checkpoint(tmp_path / "rgb.pt")


def test_refuses_nafnet_with_other_expansion(tmp_path):
    sd = NAFNet(4, 9, **SMALL_NAF).state_dict()
    sd["middle_blks.0.conv1.weight"] = torch.zeros(96, 32, 1, 1)  # dw_expand 3 instead of 2
    torch.save({"netG": sd}, tmp_path / "naf.pt")
    with pytest.raises(CheckpointError, match=r"shape mismatch \(1\): middle_blks\.0\.conv1\.weight"):
        load_checkpoint(tmp_path / "naf.pt")


@pytest.mark.parametrize("expect,msg", [
    ({"in_channels": 12}, r"has in_channels=4, but in_channels=12 was expected"),
    ({"out_channels": 4}, r"has out_channels=9, but out_channels=4 was expected"),
    ({"adaptive_head": False}, r"has adaptive_head=True, but adaptive_head=False was expected"),
    ({"arch": "naf2"}, r"has arch='unet', but arch='nafnet' was expected"),
    ({"with_photon": True}, r"4 -> 9 channels is not a supported configuration"),
])
def test_refuses_contradicting_expect(public_file, expect, msg):
    with pytest.raises(CheckpointError, match=r"good\.pt: .*" + msg):
        load_checkpoint(public_file, expect=expect)


def test_expect_for_own_format_and_unknown_expect_keys(tmp_path, public_file):
    cfg = BackboneConfig.from_channels("unet", 8, 9, concat_origin=True)
    save_checkpoint(cfg.build(), cfg, tmp_path / "o.pt")
    with pytest.raises(CheckpointError, match=r"has with_photon=False, but with_photon=True was expected"):
        load_checkpoint(tmp_path / "o.pt", expect={"with_photon": True})
    with pytest.raises(ValueError, match=r"unknown option\(s\) \['ratio'\]"):
        load_checkpoint(public_file, expect={"ratio": 100})


def test_refuses_own_format_with_bad_config(tmp_path):
    cfg = BackboneConfig.from_channels("unet", 4, 9)
    raw = {"format": "exposure-diffusion", "version": 1, "state_dict": cfg.build().state_dict(),
           "config": {**cfg.to_dict(), "in_channels": 12}}
    torch.save(raw, tmp_path / "cfg.pt")
    with pytest.raises(CheckpointError, match=r"invalid 'config': .*in_channels=12"):
        load_checkpoint(tmp_path / "cfg.pt")
    raw["config"] = {**cfg.to_dict(), "concat_origin": True, "in_channels": 8, "with_photon": False}
    torch.save(raw, tmp_path / "cfg.pt")  # config says 8 inputs, weights take 4
    with pytest.raises(CheckpointError, match=r"shape mismatch \(1\): conv1_1\.weight"):
        load_checkpoint(tmp_path / "cfg.pt")


class _CreatesFile:
    """Unpickling this would create a file: the stand-in for arbitrary code."""

    def __init__(self, target):
        self.target = target

    def __reduce__(self):
        return (open, (str(self.target), "w"))


# The name the pickler records for open: io.open up to Python 3.11, _io.open from 3.12.
OPEN_NAME = re.escape(f"{pickle.whichmodule(open, open.__qualname__)}.{open.__qualname__}")


@pytest.mark.parametrize("writer,msg", [
    ("torch.save", r"refused, it references the Python object " + OPEN_NAME),
    ("pickle-v2", r"refused, it references the Python object " + OPEN_NAME),
    # Protocol 4 is refused before the object is even reached (FRAME opcode unsupported).
    ("pickle-v4", r"not a readable weights-only PyTorch checkpoint .*Unsupported operand"),
])
def test_refuses_malicious_pickle_without_running_it(tmp_path, writer, msg):
    target = tmp_path / "PWNED"
    path = tmp_path / "evil.pt"
    if writer == "torch.save":  # a valid-looking public checkpoint with one extra entry
        torch.save({"netG": UNet(4, 9).state_dict(), "epoch": 1, "iterations": 1,
                    "extra": _CreatesFile(target)}, path)
    else:  # a plain pickle (no tensors: those would be refused on their own)
        path.write_bytes(pickle.dumps({"epoch": 1, "extra": _CreatesFile(target)},
                                      protocol=2 if writer == "pickle-v2" else 4))
    # Sanity: the payload really does create the file when unpickled unsafely.
    probe = tmp_path / "probe"
    pickle.loads(pickle.dumps(_CreatesFile(probe))).close()
    assert probe.exists()
    with pytest.raises(CheckpointError, match=r"evil\.pt: " + msg):
        load_checkpoint(path)
    assert not target.exists()


# ------------------------------------------------------------------ writing
def test_save_refuses_mismatched_config_and_unserialisable_meta(tmp_path):
    model = UNet(4, 9)
    with pytest.raises(ValueError, match="does not describe this model"):
        save_checkpoint(model, BackboneConfig.from_channels("unet", 12, 9), tmp_path / "a.pt")
    with pytest.raises(TypeError, match=r"meta\['when'\] holds a object"):
        save_checkpoint(model, BackboneConfig.from_channels("unet", 4, 9), tmp_path / "a.pt",
                        meta={"when": object()})
    with pytest.raises(TypeError, match="must be a BackboneConfig"):
        save_checkpoint(model, {"arch": "unet"}, tmp_path / "a.pt")
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("exc", [RuntimeError("disk full"), KeyboardInterrupt()])
def test_interrupted_write_keeps_previous_file(tmp_path, monkeypatch, exc):
    path = tmp_path / "model.pt"
    old_model = randomise_(UNet(4, 9), seed=1)
    export_public(old_model, path)
    before = path.read_bytes()

    def failing_save(obj, f, *a, **k):
        with open(f, "wb") as out:  # half a file, then the failure
            out.write(b"PK\x03\x04 partial")
        raise exc

    monkeypatch.setattr(ckpt.torch, "save", failing_save)
    new_model = randomise_(UNet(4, 9), seed=2)
    with pytest.raises(type(exc)):
        export_public(new_model, path, overwrite=True)
    with pytest.raises(type(exc)):
        save_checkpoint(new_model, BackboneConfig.from_channels("unet", 4, 9), path, overwrite=True)
    with pytest.raises(type(exc)):
        export_public(new_model, tmp_path / "fresh.pt")
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["model.pt"]  # no temporary file, nothing half-written
    loaded, _, _ = load_checkpoint(path)
    assert same_outputs(old_model, loaded, 4)


def test_overwrite_replaces_atomically_only_when_asked(tmp_path):
    path = tmp_path / "m.pt"
    export_public(UNet(4, 9), path)
    cfg = BackboneConfig.from_channels("unet", 4, 9)
    with pytest.raises(FileExistsError, match="m.pt already exists"):
        save_checkpoint(UNet(4, 9), cfg, path)
    assert load_checkpoint(path)[2]["format"] != "exposure-diffusion"
    save_checkpoint(UNet(4, 9), cfg, path, overwrite=True)
    assert os.listdir(tmp_path) == ["m.pt"]  # no temporary file left beside it
    assert load_checkpoint(path)[2]["format"] == "exposure-diffusion"
