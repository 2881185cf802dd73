"""vikhr: turn an English-oriented LLM into an efficient Russian model, end to end."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("vikhr")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+unknown"

__all__ = ["__version__"]
