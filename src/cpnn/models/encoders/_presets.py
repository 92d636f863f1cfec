"""Pathology foundation models users name, with the settings their model cards give.

Each preset records where the weights come from (hub id), how the backbone is built (timm
constructor settings), how inputs are normalised, the input size, which token is the embedding,
and its width. Sources: the model cards on the Hugging Face hub (``https://huggingface.co/<hub>``)
and the authors' reference code (UNI: ``uni/get_encoder/get_encoder.py``; HEST benchmark encoders).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
OPENAI_CLIP = ((0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711))
HOPTIMUS = ((0.707223, 0.578729, 0.703617), (0.211883, 0.230117, 0.177517))


@dataclass(frozen=True)
class Preset:
    """A named encoder: family, source, construction, normalisation, input size, token rule, width."""

    family: str  # "timm", "conch", "transformers"
    hub: str  # hub id the weights come from
    architecture: str = ""  # timm architecture the hub weights fit (when built locally)
    kwargs: dict[str, Any] = field(
        default_factory=dict
    )  # constructor settings the card passes; classes as "module.Name"
    local: dict[str, Any] = field(default_factory=dict)  # what else builds the architecture offline (hub config)
    mean: tuple[float, float, float] = IMAGENET[0]
    std: tuple[float, float, float] = IMAGENET[1]
    input_px: int = 224
    token: str = "cls"  # "cls", "mean" or "cls+mean" (class token next to the mean patch token)
    dim: int = 0
    card: str = ""  # the model card


PRESETS: dict[str, Preset] = {
    "uni": Preset(
        "timm",
        "hf-hub:MahmoodLab/UNI",
        "vit_large_patch16_224",
        {"init_values": 1e-5, "dynamic_img_size": True},
        {"img_size": 224, "patch_size": 16},
        dim=1024,
        card="https://huggingface.co/MahmoodLab/UNI",
    ),
    "uni2-h": Preset(
        "timm",
        "hf-hub:MahmoodLab/UNI2-h",
        "vit_giant_patch14_224",
        {
            "img_size": 224,
            "patch_size": 14,
            "depth": 24,
            "num_heads": 24,
            "init_values": 1e-5,
            "embed_dim": 1536,
            "mlp_ratio": 2.66667 * 2,
            "no_embed_class": True,
            "mlp_layer": "timm.layers.SwiGLUPacked",
            "act_layer": "torch.nn.SiLU",
            "reg_tokens": 8,
            "dynamic_img_size": True,
        },
        dim=1536,
        card="https://huggingface.co/MahmoodLab/UNI2-h",
    ),
    "conch": Preset(
        "conch",
        "hf_hub:MahmoodLab/conch",
        "conch_ViT-B-16",
        mean=OPENAI_CLIP[0],
        std=OPENAI_CLIP[1],
        input_px=448,
        dim=512,
        card="https://huggingface.co/MahmoodLab/CONCH",
    ),
    "conch-v1.5": Preset(
        "conch",
        "MahmoodLab/TITAN",
        "conch_v1_5",
        input_px=448,
        dim=768,
        card="https://huggingface.co/MahmoodLab/conchv1_5",
    ),
    "h-optimus-0": Preset(
        "timm",
        "hf-hub:bioptimus/H-optimus-0",
        "vit_giant_patch14_reg4_dinov2",
        {"init_values": 1e-5, "dynamic_img_size": False},
        {"img_size": 224, "num_classes": 0, "global_pool": "token"},
        mean=HOPTIMUS[0],
        std=HOPTIMUS[1],
        dim=1536,
        card="https://huggingface.co/bioptimus/H-optimus-0",
    ),
    "h-optimus-1": Preset(
        "timm",
        "hf-hub:bioptimus/H-optimus-1",
        "vit_giant_patch14_reg4_dinov2",
        {"init_values": 1e-5, "dynamic_img_size": False},
        {"img_size": 224, "num_classes": 0, "global_pool": "token"},
        mean=HOPTIMUS[0],
        std=HOPTIMUS[1],
        dim=1536,
        card="https://huggingface.co/bioptimus/H-optimus-1",
    ),
    "virchow": Preset(
        "timm",
        "hf-hub:paige-ai/Virchow",
        "vit_huge_patch14_224",
        {"mlp_layer": "timm.layers.SwiGLUPacked", "act_layer": "torch.nn.SiLU"},
        {"img_size": 224, "init_values": 1e-5, "mlp_ratio": 5.3375, "global_pool": "", "dynamic_img_size": True},
        token="cls+mean",
        dim=2560,
        card="https://huggingface.co/paige-ai/Virchow",
    ),
    "virchow2": Preset(
        "timm",
        "hf-hub:paige-ai/Virchow2",
        "vit_huge_patch14_224",
        {"mlp_layer": "timm.layers.SwiGLUPacked", "act_layer": "torch.nn.SiLU"},
        {
            "img_size": 224,
            "init_values": 1e-5,
            "mlp_ratio": 5.3375,
            "global_pool": "",
            "dynamic_img_size": True,
            "reg_tokens": 4,
        },
        token="cls+mean",
        dim=2560,
        card="https://huggingface.co/paige-ai/Virchow2",
    ),
    "phikon": Preset("transformers", "owkin/phikon", dim=768, card="https://huggingface.co/owkin/phikon"),
    "phikon-v2": Preset("transformers", "owkin/phikon-v2", dim=1024, card="https://huggingface.co/owkin/phikon-v2"),
    "gigapath": Preset(
        "timm",
        "hf-hub:prov-gigapath/prov-gigapath",
        "vit_giant_patch14_dinov2",
        local={
            "img_size": 224,
            "patch_size": 16,
            "embed_dim": 1536,
            "depth": 40,
            "num_heads": 24,
            "init_values": 1e-5,
            "mlp_ratio": 5.33334,
        },
        dim=1536,
        card="https://huggingface.co/prov-gigapath/prov-gigapath",
    ),
}
