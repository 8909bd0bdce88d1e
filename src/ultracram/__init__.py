"""ultracram: train transformer encoders from scratch on a small budget, and compare them rigorously."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("ultracram")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0+local"

from ultracram.config import ConfigError, ModelConfig, get_preset

__all__ = ["ConfigError", "ModelConfig", "__version__", "get_preset"]
