"""The toy zoo: tiny victims of every family trained on the embedded world, shipped as data."""

from pathlib import Path

ZOO_DIR = Path(__file__).resolve().parent
