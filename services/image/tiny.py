"""The built-in models: tiny Stable Diffusion 1.x and SDXL architectures, built from a fixed seed.

No machine that builds or tests Fabula can download weights (docs/architecture.md, "Models,
offline"), so the default model is made here, deterministically, and saved in diffusers format on
first use: the real CLIP tokenizer (built from the BPE vocabulary that ships inside
`open-clip-torch`, so token counts match real SD models), a small CLIP text encoder, a UNet and an
8x VAE. Its pictures are noise, but every stage of the real pipeline runs on it.

The shapes are chosen for speed on a CPU: the VAE has four blocks (8x down-sampling, like real
SD), and the UNet keeps attention off its highest-resolution level, so that a 512x512 image
(64x64 latents) takes seconds rather than minutes per step.

`tiny-sdxl` is the same idea for the SDXL family, so that its code paths (two text encoders,
the penultimate hidden states of both concatenated, the pooled projection of the second, size
micro-conditioning through `addition_embed_type="text_time"`) run somewhere: the two encoders
have different widths (as CLIP-L and OpenCLIP-bigG do; diffusers' single-file loader tells them
apart by width), and the second tokenizer pads with "!" as SDXL's does.
"""

from __future__ import annotations

import gzip
import importlib.util
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

import torch

log = logging.getLogger(__name__)

# Bump when the recipe below changes: a folder built from another recipe is rebuilt.
RECIPE_VERSION = 2
SDXL_RECIPE_VERSION = 1
STAMP_FILE = "fabula_tiny.json"
DEFAULT_SEED = 20240501

BOS, EOS = "<|startoftext|>", "<|endoftext|>"
# CLIP's vocabulary: 256 byte symbols, their word-final forms, the merges, then the two specials.
_MERGE_COUNT = 49152 - 256 - 2


def clip_vocabulary_file() -> Path:
    """open-clip-torch's `bpe_simple_vocab_16e6.txt.gz`, located through the installed package.

    `find_spec` finds the package without importing it (open_clip's own import needs
    torchvision, which the service does not).
    """
    spec = importlib.util.find_spec("open_clip")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "the CLIP BPE vocabulary ships inside the open-clip-torch package; install it with "
            "`pip install --no-deps open-clip-torch==3.3.0` (make install does)")
    for location in spec.submodule_search_locations:
        candidate = Path(location) / "bpe_simple_vocab_16e6.txt.gz"
        if candidate.is_file():
            return candidate
    raise FileNotFoundError("open_clip is installed but has no bpe_simple_vocab_16e6.txt.gz")


def _bytes_to_unicode() -> dict[int, str]:
    # GPT-2/CLIP's reversible byte → printable character table.
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(
        range(ord("®"), ord("ÿ") + 1))
    characters = printable[:]
    extra = 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            characters.append(256 + extra)
            extra += 1
    return dict(zip(printable, (chr(c) for c in characters)))


def write_clip_tokenizer(folder: Path) -> None:
    """Write vocab.json and merges.txt of CLIP's tokenizer (as OpenAI's CLIP builds it)."""
    with gzip.open(clip_vocabulary_file(), "rt", encoding="utf-8") as handle:
        lines = handle.read().split("\n")
    merges = [tuple(line.split()) for line in lines[1:1 + _MERGE_COUNT]]
    symbols = list(_bytes_to_unicode().values())
    vocabulary = symbols + [symbol + "</w>" for symbol in symbols] + ["".join(m) for m in merges] + [BOS, EOS]
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps({token: i for i, token in enumerate(vocabulary)},
                                                  ensure_ascii=False), encoding="utf-8")
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(" ".join(m) for m in merges) + "\n",
                                       encoding="utf-8")


def clip_tokenizer(folder: Path | None = None, *, pad_token: str = EOS):
    """A transformers CLIPTokenizer with CLIP's real vocabulary (49408 tokens).

    SD 1.x pads with the end token; SDXL's second tokenizer (OpenCLIP's) pads with "!" (id 0).
    """
    from transformers import CLIPTokenizer

    with tempfile.TemporaryDirectory() as scratch:
        where = Path(scratch) if folder is None else folder
        write_clip_tokenizer(where)
        tokenizer = CLIPTokenizer(str(where / "vocab.json"), str(where / "merges.txt"), bos_token=BOS,
                                  eos_token=EOS, pad_token=pad_token, unk_token=EOS, model_max_length=77)
        if folder is not None:
            tokenizer.save_pretrained(folder)
        return tokenizer


def _components(seed: int, tokenizer, *, inpainting: bool):
    from diffusers import AutoencoderKL, EulerDiscreteScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    hidden = 64
    torch.manual_seed(seed)
    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=2, max_position_embeddings=77, projection_dim=hidden,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id))
    torch.manual_seed(seed + 1)
    unet = UNet2DConditionModel(
        sample_size=64, in_channels=9 if inpainting else 4, out_channels=4,
        # Attention only below the top level: the top level at 512x512 has 4096 positions.
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        block_out_channels=(32, 64, 64), layers_per_block=1, cross_attention_dim=hidden,
        attention_head_dim=8, norm_num_groups=32)
    torch.manual_seed(seed + 2)
    # Four blocks: three down-samplings, so latents are 1/8 of the image, as in real SD.
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4,
        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(32, 32, 64, 64), layers_per_block=1, norm_num_groups=32, sample_size=512)
    # SD 1.x's noise schedule.
    scheduler = EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                       num_train_timesteps=1000, steps_offset=1, timestep_spacing="leading")
    return text_encoder, unet, vae, scheduler


def _sdxl_components(seed: int, tokenizer, tokenizer_2):
    from diffusers import AutoencoderKL, EulerDiscreteScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    # Two widths, as CLIP-L (768) and OpenCLIP-bigG (1280): diffusers' single-file loader picks a
    # checkpoint's encoder for each text_encoder by its width, so equal widths would be ambiguous.
    hidden, hidden_2, time_embed = 32, 64, 8

    def text_config(tok, width: int, act: str) -> CLIPTextConfig:
        return CLIPTextConfig(vocab_size=len(tok), hidden_size=width, intermediate_size=2 * width,
                              num_hidden_layers=2, num_attention_heads=2, max_position_embeddings=77,
                              projection_dim=width, hidden_act=act, bos_token_id=tok.bos_token_id,
                              eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)

    torch.manual_seed(seed)
    text_encoder = CLIPTextModel(text_config(tokenizer, hidden, "quick_gelu"))
    torch.manual_seed(seed + 1)
    text_encoder_2 = CLIPTextModelWithProjection(text_config(tokenizer_2, hidden_2, "gelu"))
    torch.manual_seed(seed + 2)
    unet = UNet2DConditionModel(
        sample_size=128, in_channels=4, out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        block_out_channels=(32, 64, 64), layers_per_block=1, attention_head_dim=8, norm_num_groups=32,
        # SDXL: both encoders' hidden states side by side, linear projections in the transformers,
        # and the added embedding of the pooled text (hidden_2) and six size numbers.
        cross_attention_dim=hidden + hidden_2, use_linear_projection=True, addition_embed_type="text_time",
        addition_time_embed_dim=time_embed, projection_class_embeddings_input_dim=6 * time_embed + hidden_2)
    torch.manual_seed(seed + 3)
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4,
        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(32, 32, 64, 64), layers_per_block=1, norm_num_groups=32, sample_size=1024,
        scaling_factor=0.13025, force_upcast=True)  # SDXL VAE's scaling factor and upcast flag
    scheduler = EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                       num_train_timesteps=1000, steps_offset=1, timestep_spacing="leading")
    return text_encoder, text_encoder_2, unet, vae, scheduler


def build_stamped(folder: Path, stamp: dict, write: Callable[[Path], None]) -> Path:
    """Run `write(scratch)` to build a tiny network's files into `folder` unless a build with this
    stamp is there (the stamp names the recipe and the seed, so a changed recipe is rebuilt)."""
    folder = Path(folder)
    if (folder / STAMP_FILE).is_file() and json.loads((folder / STAMP_FILE).read_text()) == stamp:
        return folder
    log.info("building the tiny network %s (%s)", folder, json.dumps(stamp))
    folder.parent.mkdir(parents=True, exist_ok=True)
    # Built beside the target and renamed into place, so a crash never leaves half a model that
    # the stamp check would accept, and two processes building at once do not collide.
    scratch = Path(tempfile.mkdtemp(prefix=f".{folder.name}-", dir=folder.parent))
    try:
        write(scratch)
        (scratch / STAMP_FILE).write_text(json.dumps(stamp))
        if folder.exists():
            shutil.rmtree(folder)
        os.replace(scratch, folder)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return folder


def build_tiny_sd(folder: Path, seed: int = DEFAULT_SEED, *, inpainting: bool = False) -> Path:
    """Build the tiny SD 1.x model into `folder` (diffusers format) unless a matching build is there."""
    from diffusers import StableDiffusionPipeline

    def make():
        tokenizer = clip_tokenizer()
        text_encoder, unet, vae, scheduler = _components(seed, tokenizer, inpainting=inpainting)
        return StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                                       scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                       requires_safety_checker=False)

    return build_stamped(folder, {"recipe": RECIPE_VERSION, "seed": seed, "inpainting": inpainting},
                         lambda scratch: make().save_pretrained(scratch, safe_serialization=True))


def build_tiny_sdxl(folder: Path, seed: int = DEFAULT_SEED) -> Path:
    """Build the tiny SDXL model into `folder` (StableDiffusionXLPipeline layout)."""
    from diffusers import StableDiffusionXLPipeline

    def make():
        tokenizer, tokenizer_2 = clip_tokenizer(), clip_tokenizer(pad_token="!")
        text_encoder, text_encoder_2, unet, vae, scheduler = _sdxl_components(seed, tokenizer, tokenizer_2)
        return StableDiffusionXLPipeline(vae=vae, text_encoder=text_encoder, text_encoder_2=text_encoder_2,
                                         tokenizer=tokenizer, tokenizer_2=tokenizer_2, unet=unet,
                                         scheduler=scheduler, add_watermarker=False)

    return build_stamped(folder, {"recipe": SDXL_RECIPE_VERSION, "family": "sdxl", "seed": seed},
                         lambda scratch: make().save_pretrained(scratch, safe_serialization=True))


# `builtin:<name>` sources: name → builder(folder).
BUILTIN_MODELS = {"tiny-sd": build_tiny_sd, "tiny-sdxl": build_tiny_sdxl}
