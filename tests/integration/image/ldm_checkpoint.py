"""Write a diffusers SD 1.x / SDXL folder as one `.safetensors` file in the original key layout.

The layout is that of CompVis' and Stability's checkpoints (what A1111, ComfyUI and model sites
use): `model.diffusion_model.*` (UNet, LDM block numbering), `first_stage_model.*` (VAE),
`cond_stage_model.transformer.*` (SD 1.x CLIP) or `conditioner.embedders.0.transformer.*` and
`conditioner.embedders.1.model.*` (SDXL's CLIP-L and OpenCLIP-bigG, the latter in open_clip's
own names with fused q/k/v). It is the inverse of diffusers' `loaders/single_file_utils.py`
conversions, written here because diffusers ships only the forward direction; the tests check it
by loading the file back with `from_single_file` and comparing with the folder.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch
from safetensors.torch import save_file

_UNET_TOP = {"time_embedding.linear_1": "time_embed.0", "time_embedding.linear_2": "time_embed.2",
             "add_embedding.linear_1": "label_emb.0.0", "add_embedding.linear_2": "label_emb.0.2",
             "conv_in": "input_blocks.0.0", "conv_norm_out": "out.0", "conv_out": "out.2"}
_UNET_RESNET = {"norm1": "in_layers.0", "conv1": "in_layers.2", "norm2": "out_layers.0", "conv2": "out_layers.3",
                "time_emb_proj": "emb_layers.1", "conv_shortcut": "skip_connection"}
_VAE_ATTENTION = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}


def _resnet(rest: str, names: dict[str, str]) -> str:
    head, _, tail = rest.partition(".")
    return f"{names.get(head, head)}.{tail}"


def unet_to_ldm(state: dict[str, torch.Tensor], config: dict) -> dict[str, torch.Tensor]:
    per_level = config["layers_per_block"] + 1  # LDM numbers resnets + the down/up-sampler as one sequence
    attention_levels = {int(k.split(".")[1]) for k in state if k.startswith("up_blocks.") and ".attentions." in k}
    out = {}
    for key, value in state.items():
        if (m := re.match(r"(\w+\.linear_[12]|conv_in|conv_norm_out|conv_out)\.(\w+)$", key)) and m[1] in _UNET_TOP:
            new = f"{_UNET_TOP[m[1]]}.{m[2]}"
        elif m := re.match(r"down_blocks\.(\d+)\.resnets\.(\d+)\.(.+)", key):
            new = f"input_blocks.{1 + int(m[1]) * per_level + int(m[2])}.0.{_resnet(m[3], _UNET_RESNET)}"
        elif m := re.match(r"down_blocks\.(\d+)\.attentions\.(\d+)\.(.+)", key):
            new = f"input_blocks.{1 + int(m[1]) * per_level + int(m[2])}.1.{m[3]}"
        elif m := re.match(r"down_blocks\.(\d+)\.downsamplers\.0\.conv\.(.+)", key):
            new = f"input_blocks.{(int(m[1]) + 1) * per_level}.0.op.{m[2]}"
        elif m := re.match(r"mid_block\.resnets\.(\d+)\.(.+)", key):
            new = f"middle_block.{2 * int(m[1])}.{_resnet(m[2], _UNET_RESNET)}"
        elif m := re.match(r"mid_block\.attentions\.0\.(.+)", key):
            new = f"middle_block.1.{m[1]}"
        elif m := re.match(r"up_blocks\.(\d+)\.resnets\.(\d+)\.(.+)", key):
            new = f"output_blocks.{int(m[1]) * per_level + int(m[2])}.0.{_resnet(m[3], _UNET_RESNET)}"
        elif m := re.match(r"up_blocks\.(\d+)\.attentions\.(\d+)\.(.+)", key):
            new = f"output_blocks.{int(m[1]) * per_level + int(m[2])}.1.{m[3]}"
        elif m := re.match(r"up_blocks\.(\d+)\.upsamplers\.0\.conv\.(.+)", key):
            # The up-sampler follows the level's last resnet (and its attention, if the level has one).
            slot = 2 if int(m[1]) in attention_levels else 1
            new = f"output_blocks.{int(m[1]) * per_level + per_level - 1}.{slot}.conv.{m[2]}"
        else:
            raise KeyError(f"no LDM name for UNet key {key!r}")
        out["model.diffusion_model." + new] = value
    return out


def vae_to_ldm(state: dict[str, torch.Tensor], config: dict) -> dict[str, torch.Tensor]:
    levels = len(config["up_block_types"])
    out = {}
    for key, value in state.items():
        new = key.replace("conv_norm_out", "norm_out")
        if m := re.match(r"encoder\.down_blocks\.(\d+)\.resnets\.(\d+)\.(.+)", key):
            new = f"encoder.down.{m[1]}.block.{m[2]}.{m[3].replace('conv_shortcut', 'nin_shortcut')}"
        elif m := re.match(r"encoder\.down_blocks\.(\d+)\.downsamplers\.0\.conv\.(.+)", key):
            new = f"encoder.down.{m[1]}.downsample.conv.{m[2]}"
        elif m := re.match(r"decoder\.up_blocks\.(\d+)\.resnets\.(\d+)\.(.+)", key):
            # LDM numbers the decoder's levels from the bottom.
            new = f"decoder.up.{levels - 1 - int(m[1])}.block.{m[2]}.{m[3].replace('conv_shortcut', 'nin_shortcut')}"
        elif m := re.match(r"decoder\.up_blocks\.(\d+)\.upsamplers\.0\.conv\.(.+)", key):
            new = f"decoder.up.{levels - 1 - int(m[1])}.upsample.conv.{m[2]}"
        elif m := re.match(r"(encoder|decoder)\.mid_block\.resnets\.(\d+)\.(.+)", key):
            new = f"{m[1]}.mid.block_{int(m[2]) + 1}.{m[3].replace('conv_shortcut', 'nin_shortcut')}"
        elif m := re.match(r"(encoder|decoder)\.mid_block\.attentions\.0\.(.+)\.(weight|bias)$", key):
            new = f"{m[1]}.mid.attn_1.{_VAE_ATTENTION[m[2]]}.{m[3]}"
            if m[2] != "group_norm" and m[3] == "weight":
                value = value[:, :, None, None]  # LDM's attention projections are 1x1 convolutions
        out["first_stage_model." + new] = value
    return out


def clip_to_ldm(state: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    # Original checkpoints keep transformers' `text_model.` level, which CLIPTextModel has
    # flattened away since transformers 5.6.
    return {prefix + (key if key.startswith("text_model.") else "text_model." + key): value
            for key, value in state.items()}


def open_clip_to_ldm(state: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    state = {key.removeprefix("text_model."): value for key, value in state.items()}
    out = {"positional_embedding": state.pop("embeddings.position_embedding.weight"),
           "token_embedding.weight": state.pop("embeddings.token_embedding.weight"),
           "text_projection": state.pop("text_projection.weight").T.contiguous()}
    for key, value in state.items():
        if m := re.match(r"encoder\.layers\.(\d+)\.self_attn\.([qkv])_proj\.(weight|bias)$", key):
            if m[2] == "q":  # open_clip's attention has one in-projection for q, k and v
                parts = [state[f"encoder.layers.{m[1]}.self_attn.{p}_proj.{m[3]}"] for p in "qkv"]
                out[f"transformer.resblocks.{m[1]}.attn.in_proj_{m[3]}"] = torch.cat(parts)
            continue
        new = (key.replace("encoder.layers.", "transformer.resblocks.").replace("self_attn.", "attn.")
               .replace("layer_norm1", "ln_1").replace("layer_norm2", "ln_2").replace("mlp.fc1", "mlp.c_fc")
               .replace("mlp.fc2", "mlp.c_proj").replace("final_layer_norm", "ln_final"))
        out[new] = value
    return {prefix + key: value for key, value in out.items()}


def save_ldm_checkpoint(model, path: Path) -> Path:
    """Write a LoadedModel (or anything with unet, vae, text_encoders, family) as one file."""
    tensors = {**unet_to_ldm(model.unet.state_dict(), model.unet.config),
               **vae_to_ldm(model.vae.state_dict(), model.vae.config)}
    encoders = model.text_encoders
    if model.family == "sdxl":
        tensors |= clip_to_ldm(encoders[0].state_dict(), "conditioner.embedders.0.transformer.")
        tensors |= open_clip_to_ldm(encoders[1].state_dict(), "conditioner.embedders.1.model.")
    else:
        tensors |= clip_to_ldm(encoders[0].state_dict(), "cond_stage_model.transformer.")
    save_file({key: value.contiguous() for key, value in tensors.items()}, str(path))
    return path
