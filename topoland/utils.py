"""Small shared helpers: device resolution and seeding."""
from __future__ import annotations

import torch


def resolve_device(device="auto") -> torch.device:
    """Return a :class:`torch.device`; ``"auto"`` picks CUDA when present, else the CPU."""
    if isinstance(device, torch.device):
        return device
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def make_generator(seed: int, device="cpu") -> torch.Generator:
    """A seeded :class:`torch.Generator` (library code never touches the global RNG)."""
    g = torch.Generator(device=device)
    g.manual_seed(int(seed))
    return g
