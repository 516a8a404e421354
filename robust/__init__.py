"""vlp-robust: adversarial-robustness evaluation for vision-language pre-training models."""

__version__ = "0.1.0"


def load_victim(name_or_spec, *, device: str = "cpu"):
    """Build a victim by registered name or spec string (see `robust.victims.registry`)."""
    from robust.victims.registry import load_victim as _load_victim

    return _load_victim(name_or_spec, device=device)


__all__ = ["__version__", "load_victim"]
