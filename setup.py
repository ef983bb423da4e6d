"""Installable package of the ExposureDiffusion engine: kernels, engine, training."""
from setuptools import find_packages, setup

setup(
    name="exposure-diffusion",
    version="0.1.0",
    description="Triton-fused ExposureDiffusion (ICCV 2023) for raw low-light image enhancement",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=["kernels", "kernels.*", "engine", "engine.*", "training", "training.*"]),
    package_data={"kernels": ["data/camera_params/*.json", "data/camera_params/*.md"],
                  "engine": ["data/*.pt", "data/*.md"]},
    include_package_data=True,
    install_requires=[
        # The oldest torch the suite has run on is 2.11 (2.11.0 in a CPU venv, issue #12;
        # 2.11.0+cu130 on the first GPU run); CI runs 2.13.0. README says the same. On a
        # CPU-only machine install the CPU build first (`pip install torch==2.13.0` here)
        # so pip does not fetch a CUDA build.
        "torch>=2.11",
        "triton>=3.3",
        "numpy>=1.24",
        "rawpy>=0.19",
        "nvtx>=0.2",
        "tqdm>=4.60",
        "tifffile>=2023.1",
        "pillow>=9",
        # PNG encoding (8- and 16-bit, libpng; Pillow writes no 16-bit RGB PNG) and the
        # fast default settings; tifffile also uses it for deflate when present.
        "imagecodecs>=2024.1",
        "scipy>=1.10",  # camera calibration (Tukey-lambda PPCC fits)
    ],
    entry_points={"console_scripts": ["exposure-diffusion=training.cli:main"]},
    extras_require={
        # bm3d: the evaluation's classical baseline is tested too (tests/test_holdout_eval.py)
        "test": ["pytest>=7", "scikit-image>=0.21", "bm3d>=4"],
        # CuPy ships one wheel per CUDA major version: pick the one of your driver's CUDA.
        "cupy12": ["cupy-cuda12x>=13"],
        "cupy13": ["cupy-cuda13x>=13.6"],
        # JPEG encoded on the GPU (nvJPEG through torchvision.io.encode_jpeg). Optional: a
        # torchvision wheel is built for one torch version, so it must be installed to match
        # the torch build in use (e.g. pip install torch==X torchvision==Y from the same index);
        # without it JPEGs are encoded by Pillow in the writer processes.
        "gpu-jpeg": ["torchvision>=0.19"],
        # the evaluation's classical baselines: BM3D beside the models (wavelet needs scikit-image only)
        "baselines": ["bm3d>=4", "scikit-image>=0.21"],
        # dead-leaves training scenes; the package declares Python >= 3.12 (on 3.11 see
        # training/deadleaves_scenes.py, import_deadleaves)
        "deadleaves": ["deadleaves>=1.1; python_version >= '3.12'"],
        # the documentation site (docs/, mkdocs.yml): mkdocs build --strict (tests/test_docs.py)
        "docs": ["mkdocs>=1.6", "mkdocs-material>=9.5", "mkdocstrings[python]>=0.29"],
        # CPU backbones beside PyTorch's (engine.inference.cpu_backends, timed at the first
        # frame) and ONNX export (exposure-diffusion export --onnx): ONNX Runtime with its
        # quantiser (int8), OpenVINO; onnx / onnxscript for torch.onnx's exporter
        "onnx": ["onnx>=1.16", "onnxscript>=0.2", "onnxruntime>=1.18"],
        "openvino": ["openvino>=2024.0", "onnx>=1.16", "onnxscript>=0.2", "onnxruntime>=1.18"],
    },
)
