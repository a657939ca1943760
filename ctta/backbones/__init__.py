"""Frozen backbones (timm ViT, open_clip CLIP) wrapped for prompting; each module registers in BACKBONES."""
