"""Fused Triton ops of ExposureDiffusion, each with a plain-PyTorch reference."""
