"""LoRA export: kohya names and tensors, and the kohya + diffusers files a run writes."""

from sdexp.export.kohya import (
    PeftLora,
    from_kohya_state_dict,
    kohya_te_name,
    kohya_unet_name,
    to_kohya_state_dict,
)
from sdexp.export.lora_files import addnet_hash_file, save_lora

__all__ = [
    "PeftLora",
    "addnet_hash_file",
    "from_kohya_state_dict",
    "kohya_te_name",
    "kohya_unet_name",
    "save_lora",
    "to_kohya_state_dict",
]
