"""`sdexp pretrain`: train every component of an SD-architecture text-to-image model from scratch.

Stages, each a normal run folder trained by the one Trainer: a small CLIP (contrastive; its text
tower becomes the text encoder), an AutoencoderKL, then a UNet2DConditionModel conditioned on the
frozen text tower. The result is a diffusers folder plus the CLIP, loadable offline.
"""
