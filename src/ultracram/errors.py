"""The base of every error ultracram raises for bad input. The CLI prints these as one clear
message (no traceback); anything else is a bug and keeps its traceback."""


class UltracramError(Exception):
    """Bad input or state that the user can fix; the message names the problem."""


class DataError(UltracramError, ValueError):
    """Bad pretraining data: the message names the file (and line / byte offset) and the problem."""


class RunMismatchError(UltracramError, ValueError):
    """A directory holds a different run (other settings) than the one asked for; the message
    names the record file, every differing setting, and what to do."""


class MissingDependencyError(UltracramError, ImportError):
    """An optional package that a feature needs is not installed; the message says which
    feature, which package, and how to install it."""


def optional_import(module: str, feature: str, package: str | None = None):
    """Import ``module`` for ``feature``, or raise ``MissingDependencyError`` saying so.

    ultracram imports and runs with torch, Lightning, numba, tokenizers, safetensors,
    scikit-learn, matplotlib and rich alone (as on a GPU machine with nothing else installed);
    ``datasets``, ``zstandard``, ``psutil``, ``wandb``, ``transformers`` and ``triton`` are imported
    through here, only when their feature is used.
    """
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as e:
        name = package or module.split(".")[0]
        raise MissingDependencyError(f"{feature} needs the Python package {name!r}, which is not installed: "
                                     f"pip install {name}") from e  # fmt: skip
