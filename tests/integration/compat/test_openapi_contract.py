"""A property-based run of schemathesis over the gateway's whole OpenAPI document against the real
stack (editor, text service on a tiny model, image service on the tiny image model, gateway under
uvicorn), signed in: nothing answers 5xx, every answer's status, headers, content type and body
are the ones the document states, and a 405's Allow lists exactly the methods the document gives
its path.

Also a request valid by the document is accepted and one invalid by it refused
(positive_data_acceptance, negative_data_rejection), except where schemathesis.toml, beside this
file, turns one of them off for an operation, with the reason; the hooks
(schemathesis_hooks.py) make positive cases valid in the few fields JSON Schema cannot describe.
The services' limits reach the document at run time (gateway/contract.py), so the run tests the
limits of this deployment: a text service capped at MAX_NEW_TOKENS, an image service at MAX_STEPS.

The `st` command runs in a subprocess so that the stack keeps serving in this test's event loop.
"""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

import httpx
import torch

from services.editor.embedded import embedded_editor, fast_settings
from services.image.models import load_model as load_image_model
from services.image.settings import ModelOptions
from services.image.tiny import build_tiny_sd
from services.text.models import load_model as load_text_model
from services.text.testing import build_tiny_model
from tests.integration.compat.conftest import CHATML
from tests.integration.gateway.harness import gateway_settings, register_user, serve_gateway
from tests.integration.image.conftest import running_image_service
from tests.integration.text.conftest import running_text_service

REPOSITORY = Path(__file__).resolve().parents[3]
# The checks, and the operations where the acceptance checks are not on yet, with the reason.
CONFIG = Path(__file__).with_name("schemathesis.toml")
# Examples per operation. The seed makes a failure reproducible.
MAX_EXAMPLES = 15
# The text service's cap on new tokens, at the compatible APIs' largest default (KoboldAI's
# max_length 80), which their clients rely on; the image model's defaults within the image
# service's limits. Longer generations only cost time; what they answer is checked on shorter
# ones just the same.
MAX_NEW_TOKENS = 80
MAX_STEPS = 4
SIDE = 128


async def limits_learnt(live, timeout_s: float = 60.0) -> None:
    """The gateway learns the services' limits in the background after it starts; the run must
    see the document that carries them."""
    contract = live.server.config.app.state.contract
    deadline = asyncio.get_running_loop().time() + timeout_s
    while contract.limits is None:
        assert asyncio.get_running_loop().time() < deadline, "the gateway never learnt the services' limits"
        await asyncio.sleep(0.05)


async def test_the_whole_openapi_document_is_the_contract(tmp_path) -> None:
    text_folder = build_tiny_model(tmp_path / "tiny-text", seed=0)
    text_model = load_text_model("tiny", str(text_folder), cache_dir=tmp_path / "text-cache", device="cpu",
                                 dtype="float32", quantization="none")
    text_model.tokenizer.chat_template = CHATML  # so that /v1/chat/completions serves it
    image_model = load_image_model("tiny", ModelOptions(source=str(build_tiny_sd(tmp_path / "tiny-sd")),
                                                                steps=MAX_STEPS, width=SIDE, height=SIDE),
                                   cache_dir=tmp_path / "image-cache", device=torch.device("cpu"),
                                   dtype=torch.float32)
    async with embedded_editor(fast_settings(f"sqlite:///{tmp_path / 'editor.db'}")) as editor, \
            running_text_service([text_model], max_new_tokens=MAX_NEW_TOKENS) as text, \
            running_image_service([image_model], tmp_path, max_steps=MAX_STEPS,
                                   max_pixels=SIDE * SIDE) as image:
        settings = gateway_settings(editor.address, text_address=f"127.0.0.1:{text.server.port}",
                                    image_address=image.address)
        async with serve_gateway(settings) as live, httpx.AsyncClient(base_url=live.url, timeout=60) as client:
            await limits_learnt(live)
            limits = live.server.config.app.state.contract.limits
            user = await register_user(client, "contract")
            st = Path(sys.executable).with_name("st")
            env = {**os.environ, "SCHEMATHESIS_HOOKS": "tests.integration.compat.schemathesis_hooks",
                   "FABULA_CONTRACT_BASE_URL": live.url, "FABULA_CONTRACT_TOKEN": user.token,
                   "FABULA_CONTRACT_MAX_NEW_TOKENS": str(MAX_NEW_TOKENS),
                   "FABULA_CONTRACT_MAX_PROMPT_CHARS": str(limits.max_prompt_chars),
                   "FABULA_CONTRACT_OPENAI_CHAT_MAX_TOKENS": str(settings.openai_chat_max_tokens),
                   "FABULA_CONTRACT_CONTEXT_WINDOW": str(text_model.context_window),
                   "FABULA_CONTRACT_MAX_PIXELS": str(SIDE * SIDE), "FABULA_CONTRACT_DEFAULT_SIDE": str(SIDE),
                   "FABULA_CONTRACT_MAX_IMAGES": str(image.generator.settings.max_images),
                   "FABULA_CONTRACT_KDF": f"{editor.settings.min_kdf_opslimit},{editor.settings.min_kdf_memlimit}",
                   "PYTHONPATH": str(REPOSITORY)}
            process = await asyncio.create_subprocess_exec(
                str(st), "--config-file", str(CONFIG), "run", f"{live.url}/openapi.json",
                "--max-examples", str(MAX_EXAMPLES), "--phases", "examples,fuzzing",
                "--seed", "1", "--workers", "1", "--request-timeout", "60", "--no-color",
                cwd=REPOSITORY, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
            output, _ = await process.communicate()
            report = output.decode(errors="replace")
            assert process.returncode == 0, report
