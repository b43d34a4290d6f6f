"""C kernels the runtime builds on first use (runtime/cpu_kernel.py)."""
