"""Output formats and their metadata: PNG 8/16-bit (fast / small), JPEG, TIFF 16/8-bit
(uncompressed / deflate), DNG; EXIF in each; the GPU JPEG path's glue and fallbacks."""
import io
import sys
import types

import imagecodecs
import numpy as np
import pytest
import tifffile
import torch
from PIL import Image

from engine import BackboneConfig, Pipeline
from engine.inference.batch import enhance_files
from engine.io import encode
from engine.io.exif import Provenance, Tag, exif_tags, jpeg_with_exif, pillow_exif, png_with_exif
from engine.io.output import OutputOptions, output_format
from engine.io.raw import RawFrame
from tests.dngfactory import make_bayer_dng

SMALL = {"widths": (8, 8, 16, 16, 16)}
META = dict(make="Sony", model="ILCE-7SM2", iso=3200, exposure_time=0.1, lens="FE 35mm F1.8", f_number=1.8,
            focal_length=35.0, capture_time="2026:11:30 21:15:42", orientation=8)


@pytest.fixture(scope="module")
def pipe():
    torch.manual_seed(0)
    cfg = BackboneConfig(options=SMALL)
    return Pipeline(cfg.build(), cfg, device="cpu", precision="fp32")


def frame(**meta) -> RawFrame:
    cfa = torch.from_numpy(np.random.default_rng(0).integers(512, 16383, (32, 48)).astype(np.uint16))
    return RawFrame(cfa=cfa, pattern="RGGB", black_level=512, white_level=16383, **meta)


def image(dtype=np.uint8, h=40, w=56):
    y, x = np.mgrid[0:h, 0:w]
    top = np.iinfo(dtype).max
    return (np.stack([x / w, y / h, (x + y) / (h + w)], axis=-1) * top).astype(dtype)


def test_exif_tags_carry_every_capture_field_and_the_provenance():
    tags = {(t.ifd, t.code): t.value for t in exif_tags(frame(**META), Provenance(300, 4))}
    assert tags[("ifd0", 271)] == "Sony" and tags[("ifd0", 272)] == "ILCE-7SM2" and tags[("ifd0", 274)] == 8
    assert tags[("exif", 33434)] == 0.1 and tags[("exif", 33437)] == 1.8 and tags[("exif", 34855)] == 3200
    assert tags[("exif", 36867)] == tags[("exif", 36868)] == "2026:11:30 21:15:42"
    assert tags[("exif", 37386)] == 35.0 and tags[("exif", 42036)] == "FE 35mm F1.8"
    assert tags[("ifd0", 270)] == "Enhanced by ExposureDiffusion 0.1.0: exposure ratio 300, 4 step(s)"
    assert exif_tags(frame()) == []  # nothing known, nothing written (no empty EXIF IFD)


@pytest.mark.parametrize("options", [OutputOptions("png"), OutputOptions("png", bits=16),
                                     OutputOptions("png", compression="small"),
                                     OutputOptions("png", bits=16, compression="small"),
                                     OutputOptions("jpeg", quality=80), OutputOptions("tiff"),
                                     OutputOptions("tiff", bits=8, compression="small")])
def test_encoders_round_trip_pixels_and_exif(options):
    img = image(np.uint16 if options.bits == 16 else np.uint8)
    tags = exif_tags(frame(**META), Provenance(100, 3))
    from engine.io.output import encode_srgb

    data = encode_srgb(img, options, tags)
    back = {"png": imagecodecs.png_decode, "jpeg": imagecodecs.jpeg8_decode,
            "tiff": lambda d: tifffile.imread(io.BytesIO(d))}[options.format](data)
    assert back.dtype == img.dtype and back.shape == img.shape
    if options.format == "jpeg":
        assert np.abs(back.astype(float) - img).mean() < 3  # lossy
    else:
        np.testing.assert_array_equal(back, img)  # lossless, whatever the compression
    if options.format == "tiff":
        with tifffile.TiffFile(io.BytesIO(data)) as tf:
            page = tf.pages[0]
            exif = page.tags[34665].value
            assert page.compression == (8 if options.compression == "small" else 1)
            assert (page.tags[271].value, page.tags[274].value) == ("Sony", 8)
            assert (exif["ISOSpeedRatings"], exif["LensModel"]) == (3200, "FE 35mm F1.8")
    else:
        exif = Image.open(io.BytesIO(data)).getexif()
        assert (exif[271], exif[274]) == ("Sony", 8)
        sub = exif.get_ifd(0x8769)
        assert (sub[34855], sub[42036], sub[36867]) == (3200, "FE 35mm F1.8", "2026:11:30 21:15:42")
        assert float(sub[33437]) == pytest.approx(1.8)


def test_fast_png_is_the_fast_setting_and_small_is_smaller():
    img = image(h=200, w=300)
    fast, small = encode.encode_png(img, [], "fast"), encode.encode_png(img, [], "small")
    assert len(small) < len(fast)
    assert fast == png_with_exif(bytes(imagecodecs.png_encode(img, **encode.PNG_FAST)), pillow_exif([]))


def test_png_and_jpeg_exif_splicing_keeps_the_stream_valid():
    exif = pillow_exif([Tag("ifd0", 271, 2, "Maker")])
    png = png_with_exif(bytes(imagecodecs.png_encode(image())), exif)
    assert png[8 + 25 + 4:8 + 25 + 8] == b"eXIf"  # right after IHDR (8 + 4 + 4 + 13 + 4 bytes)
    assert Image.open(io.BytesIO(png)).getexif()[271] == "Maker"
    buf = io.BytesIO()
    Image.fromarray(image()).save(buf, format="JPEG")
    jpeg = jpeg_with_exif(buf.getvalue(), exif)
    im = Image.open(io.BytesIO(jpeg))
    im.load()
    assert im.getexif()[271] == "Maker" and im.size == (56, 40)
    with pytest.raises(ValueError, match="not a PNG"):
        png_with_exif(b"GIF89a", exif)
    with pytest.raises(ValueError, match="not a JPEG"):
        jpeg_with_exif(b"\x89PNG", exif)


@pytest.mark.parametrize("kw, match", [(dict(format="gif"), "unknown output format 'gif'"),
                                       (dict(format="jpeg", bits=16), "jpeg output takes bits 8, got 16"),
                                       (dict(format="png", bits=12), "png output takes bits 8 or 16, got 12"),
                                       (dict(format="jpeg", quality=0), "quality must be an integer in 1..100"),
                                       (dict(format="png", compression="max"), "compression must be one of")])
def test_output_options_refusals(kw, match):
    with pytest.raises(ValueError, match=match):
        OutputOptions(**kw)


def test_format_names_and_extensions():
    assert [output_format(p) for p in ("a.JPG", "a.jpeg", "a.tif", "a.png", "a.dng")] == [
        "jpeg", "jpeg", "tiff", "png", "dng"]
    assert OutputOptions("jpg").extension == ".jpg" and OutputOptions("tif").bits == 16


# ----------------------------------------------------------------------------- GPU JPEG


def test_device_jpeg_only_on_cuda_with_torchvision(monkeypatch):
    assert not encode.device_jpeg_available("cpu")
    monkeypatch.setitem(sys.modules, "torchvision", None)  # import fails: absent or broken
    monkeypatch.setitem(sys.modules, "torchvision.io", None)
    assert not encode.device_jpeg_available(torch.device("cuda", 0))


def test_jpeg_on_device_is_refused_without_a_cuda_pipeline(pipe, tmp_path):
    make_bayer_dng(tmp_path / "a.dng", height=32, width=48)
    with pytest.raises(ValueError, match="jpeg_on_device=True needs a CUDA pipeline"):
        enhance_files(pipe, [tmp_path / "a.dng"], [tmp_path / "a.jpg"], fmt=OutputOptions("jpeg", jpeg_on_device=True),
                      ratio=50, steps=1)
    assert not (tmp_path / "a.jpg").exists()


def test_device_jpeg_glue_batches_chw_images_and_returns_bytes(monkeypatch):
    """``encode_jpeg_on_device`` hands torchvision one list of [3, H, W] uint8 tensors and
    turns its list of uint8 byte tensors into bytes (torchvision stood in for here by a
    Pillow encoder with torchvision's signature; the real nvJPEG call runs in
    tests/test_cuda.py)."""
    calls = []

    def encode_jpeg(images, quality):
        calls.append((len(images), quality))
        out = []
        for im in images:
            assert im.dtype == torch.uint8 and im.shape[0] == 3 and im.is_contiguous()
            buf = io.BytesIO()
            Image.fromarray(im.permute(1, 2, 0).numpy()).save(buf, format="JPEG", quality=quality)
            out.append(torch.frombuffer(bytearray(buf.getvalue()), dtype=torch.uint8))
        return out

    fake = types.ModuleType("torchvision.io")
    fake.encode_jpeg = encode_jpeg
    monkeypatch.setitem(sys.modules, "torchvision", types.ModuleType("torchvision"))
    monkeypatch.setitem(sys.modules, "torchvision.io", fake)
    imgs = [torch.from_numpy(image()), torch.from_numpy(image()[::-1].copy())]
    jpegs = encode.encode_jpeg_on_device(imgs, quality=77)
    assert calls == [(2, 77)]
    for j, im in zip(jpegs, imgs):
        assert isinstance(j, bytes)
        back = np.asarray(Image.open(io.BytesIO(jpeg_with_exif(j, pillow_exif([])))))
        assert np.abs(back.astype(float) - im.numpy()).mean() < 3


@pytest.mark.parametrize("magic", [b"IIU\x00", b"IIRO"])
def test_metadata_of_rw2_and_orf_structures(tmp_path, magic):
    """Panasonic RW2 and Olympus ORF are TIFF structures with another magic number: their
    make, model and capture tags are read too (tifffile parses them)."""
    from engine.io.raw import _TIFF_MAGICS
    from engine.io.tiff_metadata import tiff_metadata

    path = tmp_path / "x.raw"
    make_bayer_dng(path, make="Panasonic", model="DC-S5", iso=1600)
    data = bytearray(path.read_bytes())
    data[:4] = magic
    path.write_bytes(bytes(data))
    meta = tiff_metadata(path)
    assert magic in _TIFF_MAGICS
    assert (meta["make"], meta["model"], meta["iso"]) == ("Panasonic", "DC-S5", 1600)
