"""Training data: find images, read captions, validate up front, and serve deterministic augmented tensors.

Names are imported on first use, so reading the config schemas (``sdexp.data.options``) does not
pull in torch and Pillow.
"""

from importlib import import_module

_HOMES = {
    "read_caption": "captions",
    "ImageCaptionDataset": "dataset",
    "collate": "dataset",
    "load_dataset": "dataset",
    "IMAGE_EXTENSIONS": "scan",
    "BadImage": "scan",
    "ImageRecord": "scan",
    "find_images": "scan",
    "scan_folder": "scan",
    "load_rgb": "transforms",
    "resize_and_crop": "transforms",
    "to_rgb": "transforms",
    "to_tensor": "transforms",
}

__all__ = sorted(_HOMES)


def __getattr__(name: str):
    if name not in _HOMES:
        raise AttributeError(f"module 'sdexp.data' has no attribute {name!r}")
    return getattr(import_module(f"sdexp.data.{_HOMES[name]}"), name)
