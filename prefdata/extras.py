"""Optional parts of the install. The core (`pip install prefdata`) builds, queries, exports and publishes
datasets; training, evaluation, iteration and the model steps of a build need the `train` extra (torch,
transformers, accelerate, peft, gguf), imported only when such a command or step runs. Without it they stop
with one line saying what to install, never a traceback."""
from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from prefdata.errors import PrefdataError

# top-level modules of the `train` extra's packages (torchvision for the VLM/diffusion image transforms)
TRAIN_MODULES = frozenset({"torch", "torchvision", "transformers", "accelerate", "peft", "gguf"})
TRAIN_INSTALL = "pip install 'prefdata[train]'"


class MissingExtra(PrefdataError):
    """A command or step needs a package of an extra that is not installed."""

    def __init__(self, what: str, module: str):
        super().__init__(f"{what} needs {module}, which the core install leaves out: {TRAIN_INSTALL} "
                         f"(or `pip install -e '.[train]'` in a checkout)")
        self.module = module


@contextmanager
def needs_train(what: str) -> Iterator[None]:
    """Run the block; a missing `train` package (torch, transformers, ...) becomes MissingExtra naming `what`.
    Any other ImportError (a broken install, a missing optional package of another extra) passes unchanged."""
    try:
        yield
    except ModuleNotFoundError as e:
        top = (e.name or "").split(".")[0]
        if top not in TRAIN_MODULES:
            raise
        raise MissingExtra(what, top) from None


def require_train(what: str, modules: tuple[str, ...] = ("torch", "transformers", "accelerate")) -> None:
    """Stop before any work, with MissingExtra, when a package `what` always uses is not installed (looked up,
    not imported: the command imports it when it gets there)."""
    import importlib.util

    for module in modules:
        if importlib.util.find_spec(module) is None:
            raise MissingExtra(what, module)
