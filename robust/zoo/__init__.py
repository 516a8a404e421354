"""The toy zoo: tiny victims of every family trained on the embedded world, shipped as data."""
