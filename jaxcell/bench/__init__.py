"""Benchmarks: jaxcell's lane engine against a sequential PyTorch reference and the hardware's matmul peak."""
