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
        # Any torch >= 2.3; on a CPU-only machine install the CPU build first
        # (`pip install torch==2.13.0` here) so pip does not fetch a CUDA build.
        "torch>=2.3",
        "triton>=3.3",
        "numpy>=1.24",
        "rawpy>=0.19",
        "nvtx>=0.2",
        "tqdm>=4.60",
        "tifffile>=2023.1",
        "pillow>=9",
        "scipy>=1.10",  # camera calibration (Tukey-lambda PPCC fits)
    ],
    entry_points={"console_scripts": ["exposure-diffusion=training.cli:main"]},
    extras_require={
        "test": ["pytest>=7", "scikit-image>=0.21"],
        "cupy": ["cupy-cuda12x>=13"],
        # issue 14's evaluation: BM3D beside the models (wavelet needs scikit-image only)
        "baselines": ["bm3d>=4", "scikit-image>=0.21"],
        # dead-leaves training scenes; the package declares Python >= 3.12 (on 3.11 see
        # training/deadleaves_scenes.py, import_deadleaves)
        "deadleaves": ["deadleaves>=1.1; python_version >= '3.12'"],
    },
)
