"""The package version (its own module, so no module imports the package root)."""

__version__ = "0.1.0.dev0"
