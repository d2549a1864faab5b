"""The "cuda" device on CuPy. Importing this module does not import CuPy; ``load()`` does."""

from __future__ import annotations

from gradcore.backend import DeviceError

INSTALL_HINT = (
    "install CuPy for your CUDA driver: pip install 'gradcore[cuda12]' or 'gradcore[cuda13]'"
)


def load():
    try:
        import cupy  # noqa: F401
    except ImportError as error:
        raise DeviceError(f"device 'cuda' is unavailable: CuPy is not installed ({error}); "
                          f"{INSTALL_HINT}") from error
    raise DeviceError("device 'cuda' is unavailable: the CuPy backend is not written yet")
