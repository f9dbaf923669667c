"""flowtape.bpf: the eBPF C programs, shipped as package data (read them with importlib.resources)."""
