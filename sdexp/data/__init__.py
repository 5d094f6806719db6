"""Training data: find images, read captions, validate up front, and serve deterministic augmented tensors."""

from sdexp.data.captions import read_caption
from sdexp.data.dataset import ImageCaptionDataset, collate, load_dataset
from sdexp.data.scan import IMAGE_EXTENSIONS, BadImage, ImageRecord, find_images, scan_folder
from sdexp.data.transforms import load_rgb, resize_and_crop, to_rgb, to_tensor

__all__ = [
    "IMAGE_EXTENSIONS",
    "BadImage",
    "ImageCaptionDataset",
    "ImageRecord",
    "collate",
    "find_images",
    "load_dataset",
    "load_rgb",
    "read_caption",
    "resize_and_crop",
    "scan_folder",
    "to_rgb",
    "to_tensor",
]
