"""Reference images (NovelAI's vibe transfer) through an IP-Adapter.

The adapter is loaded with diffusers' own loader (`load_ip_adapter` on a pipeline over the
model's UNet), from local files the operator configures (`ip_adapter` of a model: the weights
file and the CLIP vision encoder folder); `builtin:tiny-ip-adapter` is a small random one built
for the model's UNet, saved in the same layout and loaded through the same path. The loader's
image projection and per-layer key/value projections are then taken over by the service's own
cross-attention processor (attention.py), which gives every reference of every row its own
strength, and the UNet is put back as it was, so requests without references run as before.

**Strength** is the IP-Adapter scale of the reference's attention (0 to 2; NovelAI's "reference
strength"). **Information extracted** (NovelAI: how much of the image's information is used) is
mapped to a blend of the reference's image embedding toward the embedding of a plain mid-grey
image, `info * e(image) + (1 - info) * e(grey)`: at 1 the adapter sees the image as it is; lower
values keep what the embedding holds most strongly (overall colour and style) and lose detail;
near 0 the reference says no more than a grey card. The unguided rows see a zero embedding, as
diffusers' IP-Adapter pipelines give them.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from PIL import Image

from services.image import images as pixels
from services.image.models import BUILTIN_PREFIX
from services.image.tiny import build_stamped
from services.toolkit.errors import FailedPrecondition, InvalidArgument

if TYPE_CHECKING:
    from services.image.models import LoadedModel
    from services.image.settings import IPAdapterOptions

log = logging.getLogger(__name__)

TINY_IP_ADAPTER = "builtin:tiny-ip-adapter"
TINY_WEIGHTS_FILE = "ip-adapter.safetensors"
TINY_RECIPE = 1
DEFAULT_STRENGTH = 0.6
MAX_STRENGTH = 2.0
NEUTRAL_GREY = (128, 128, 128)


@dataclass
class RawReference:
    image: bytes = b""
    strength: float | None = None
    information_extracted: float | None = None


@dataclass
class Reference:
    image: Image.Image
    strength: float
    information_extracted: float


def check_references(raw: list[RawReference], *, max_references: int, max_input_pixels: int) -> list[Reference]:
    """Validate the references (InvalidArgument naming `references[i].field`); the count first,
    before any image is decoded."""
    if len(raw) > max_references:
        raise InvalidArgument("references", f"<{len(raw)} references>", f"at most {max_references} are allowed")
    references = []
    for index, item in enumerate(raw):
        where = f"references[{index}]"
        strength = DEFAULT_STRENGTH if item.strength is None else item.strength
        if not math.isfinite(strength) or not 0.0 <= strength <= MAX_STRENGTH:
            raise InvalidArgument(f"{where}.strength", strength, f"must be a number in [0, {MAX_STRENGTH}]")
        information = 1.0 if item.information_extracted is None else item.information_extracted
        if not math.isfinite(information) or not 0.0 < information <= 1.0:
            raise InvalidArgument(f"{where}.information_extracted", information, "must be a number in (0, 1]")
        image = pixels.decode_image(item.image, f"{where}.image", max_pixels=max_input_pixels)
        references.append(Reference(image, float(strength), float(information)))
    return references


class IPAdapter:
    """One model's loaded IP-Adapter: image encoder, its image processor, the projection of image
    embeddings to tokens, and each cross-attention layer's (to_k_ip, to_v_ip)."""

    def __init__(self, image_encoder, feature_extractor, projection, layers, *, plus: bool) -> None:
        self.image_encoder = image_encoder
        self.feature_extractor = feature_extractor
        self.projection = projection
        self.layers = layers
        self.plus = plus  # "plus" adapters read the encoder's penultimate hidden states
        self._neutral: torch.Tensor | None = None

    @property
    def device(self) -> torch.device:
        return self.image_encoder.device

    @property
    def dtype(self) -> torch.dtype:
        return self.image_encoder.dtype

    @torch.inference_mode()
    def _embed_pixels(self, pixel_values: torch.Tensor) -> torch.Tensor:
        if self.plus:
            return self.image_encoder(pixel_values, output_hidden_states=True).hidden_states[-2]
        return self.image_encoder(pixel_values).image_embeds

    def _pixels(self, image: Image.Image) -> torch.Tensor:
        values = self.feature_extractor(image.convert("RGB"), return_tensors="pt").pixel_values
        return values.to(self.device, self.dtype)

    def embed(self, image: Image.Image) -> torch.Tensor:
        return self._embed_pixels(self._pixels(image))

    def neutral(self) -> torch.Tensor:
        if self._neutral is None:
            size = self.feature_extractor.crop_size
            grey = Image.new("RGB", (size["width"], size["height"]), NEUTRAL_GREY)
            self._neutral = self.embed(grey)
        return self._neutral

    @torch.inference_mode()
    def tokens(self, references: list[Reference]) -> tuple[torch.Tensor, torch.Tensor]:
        """(guided, unguided) image tokens, each [references, tokens, dim]."""
        guided, unguided = [], []
        for reference in references:
            embedding = self.embed(reference.image)
            info = reference.information_extracted
            if info < 1.0:
                embedding = info * embedding + (1.0 - info) * self.neutral()
            if self.plus:
                empty = self._embed_pixels(torch.zeros_like(self._pixels(reference.image)))
            else:
                empty = torch.zeros_like(embedding)
            guided.append(self._project(embedding))
            unguided.append(self._project(empty))
        return torch.cat(guided), torch.cat(unguided)

    def _project(self, embedding: torch.Tensor) -> torch.Tensor:
        # diffusers' projections take [batch, images, ...]; one image here.
        tokens = self.projection(embedding.unsqueeze(1))
        return tokens.reshape(1, -1, tokens.shape[-1])


def _resolve(options: IPAdapterOptions, model: LoadedModel, cache_dir: Path) -> tuple[Path, Path]:
    """(weights file, image encoder folder) of the configured adapter; builds the built-in one."""
    if options.weights.startswith(BUILTIN_PREFIX):
        if options.weights != TINY_IP_ADAPTER:
            raise FailedPrecondition(f"model {model.name}: unknown built-in IP-Adapter {options.weights!r}; the "
                                     f"built-in one is {TINY_IP_ADAPTER}")
        folder = build_tiny_ip_adapter(cache_dir / "models" / f"tiny-ip-adapter-{model.family}-{model.short_hash}",
                                       model.unet)
        return folder / TINY_WEIGHTS_FILE, folder / "image_encoder"
    weights = Path(options.weights).expanduser()
    if not weights.is_file():
        raise FailedPrecondition(f"model {model.name}: ip_adapter.weights {options.weights!r} is not a file")
    encoder = Path(options.image_encoder).expanduser() if options.image_encoder else weights.parent / "image_encoder"
    if not (encoder / "config.json").is_file():
        raise FailedPrecondition(f"model {model.name}: ip_adapter.image_encoder {str(encoder)!r} is not a "
                                 "CLIPVisionModelWithProjection folder (config.json and weights)")
    return weights, encoder


def load_ip_adapter(model: LoadedModel, options: IPAdapterOptions, cache_dir: Path) -> IPAdapter:
    """Load the adapter through diffusers' loader, keep its parts, and put the UNet back."""
    from diffusers.models.attention_processor import IPAdapterAttnProcessor, IPAdapterAttnProcessor2_0
    from diffusers.models.embeddings import ImageProjection
    from transformers import CLIPImageProcessor, CLIPVisionModelWithProjection

    weights, encoder_folder = _resolve(options, model, cache_dir)
    from services.image.attention import plain_processors

    unet = model.unet
    # diffusers' loader re-creates each layer's processor from its class: start from plain ones.
    before = plain_processors(unet)
    unet.set_attn_processor(dict(before))
    pipe = model.pipeline()
    try:
        pipe.load_ip_adapter(str(weights.parent), subfolder="", weight_name=weights.name, image_encoder_folder=None,
                             local_files_only=True)
    except (OSError, ValueError, KeyError, RuntimeError) as error:
        unet.set_attn_processor(before)
        unet.encoder_hid_proj = None
        unet.register_to_config(encoder_hid_dim_type=None)
        raise FailedPrecondition(f"model {model.name}: could not load the IP-Adapter {weights} ({error}); it must "
                                 f"match the model's family ({model.family})") from error
    projection = unet.encoder_hid_proj.image_projection_layers[0]
    layers = {}
    for name, processor in unet.attn_processors.items():
        if isinstance(processor, IPAdapterAttnProcessor | IPAdapterAttnProcessor2_0):
            layers[name] = (processor.to_k_ip[0], processor.to_v_ip[0])
    # Back to the UNet as it was: the projections live on in the service's own processors.
    unet.encoder_hid_proj = None
    unet.register_to_config(encoder_hid_dim_type=None)
    unet.set_attn_processor(before)
    encoder = CLIPVisionModelWithProjection.from_pretrained(str(encoder_folder), local_files_only=True,
                                                            dtype=unet.dtype).to(unet.device)
    encoder.eval().requires_grad_(False)
    projection.eval().requires_grad_(False)
    if (encoder_folder / "preprocessor_config.json").is_file():
        processor = CLIPImageProcessor.from_pretrained(str(encoder_folder), local_files_only=True)
    else:
        # What diffusers' loader makes when the folder has none: CLIP's preprocessing at the encoder's size.
        size = encoder.config.image_size
        processor = CLIPImageProcessor(size=size, crop_size=size)
    plus = not isinstance(projection, ImageProjection)
    log.info("model %s: IP-Adapter %s (%d cross-attention layers)", model.name, weights, len(layers))
    return IPAdapter(encoder, processor, projection, layers, plus=plus)


def build_tiny_ip_adapter(folder: Path, unet: torch.nn.Module, seed: int = 20240502) -> Path:
    """A random IP-Adapter for `unet` in the layout real ones ship in: `ip-adapter.safetensors`
    (image_proj.* and ip_adapter.<n>.to_k_ip/to_v_ip.*, numbered as diffusers' loader reads them)
    and `image_encoder/` (a small CLIPVisionModelWithProjection and its image processor)."""
    from safetensors.torch import save_file
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModelWithProjection

    def write(scratch: Path) -> None:
        generator = torch.Generator().manual_seed(seed)
        embed_dim, image_size = 32, 32
        torch.manual_seed(seed)
        encoder = CLIPVisionModelWithProjection(CLIPVisionConfig(
            hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, image_size=image_size,
            patch_size=8, projection_dim=embed_dim))
        encoder.save_pretrained(scratch / "image_encoder", safe_serialization=True)
        CLIPImageProcessor(size={"shortest_edge": image_size},
                           crop_size={"height": image_size, "width": image_size}).save_pretrained(
            scratch / "image_encoder")
        cross = unet.config.cross_attention_dim

        def random(*shape: int) -> torch.Tensor:
            return (torch.randn(*shape, generator=generator) / math.sqrt(shape[-1])).contiguous()

        tensors = {"image_proj.proj.weight": random(4 * cross, embed_dim), "image_proj.proj.bias": torch.zeros(4 * cross),
                   "image_proj.norm.weight": torch.ones(cross), "image_proj.norm.bias": torch.zeros(cross)}
        key_id = 1
        for name in unet.attn_processors:
            if not name.endswith("attn2.processor"):
                continue
            attention = unet.get_submodule(name.removesuffix(".processor"))
            hidden = attention.to_k.out_features
            tensors[f"ip_adapter.{key_id}.to_k_ip.weight"] = random(hidden, cross)
            tensors[f"ip_adapter.{key_id}.to_v_ip.weight"] = random(hidden, cross)
            key_id += 2  # diffusers' loader numbers the cross-attention layers 1, 3, 5, ...
        save_file(tensors, str(scratch / TINY_WEIGHTS_FILE))

    return build_stamped(folder, {"recipe": TINY_RECIPE, "seed": seed}, write)
