"""The toy zoo: tiny victims of every family trained on the embedded world, shipped as data."""

from robust.resources import zoo_dir

ZOO_DIR = zoo_dir()
