"""A property-based run of schemathesis over the gateway's whole OpenAPI document against the real
stack (editor, text service on a tiny model, image service on the tiny image model, gateway under
uvicorn), signed in: nothing answers 5xx, every answer's status, headers, content type and body
are the ones the document states, and a 405's Allow lists exactly the methods the document gives
its path.

Not among the checks yet: positive_data_acceptance and negative_data_rejection (a request valid by
the document is accepted, an invalid one refused). The document does not state every constraint
the services enforce; docs/compatible-apis.md, "Contract checks", says which and why.

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
from tests.integration.gateway.harness import gateway_settings, register_user, serve_gateway
from tests.integration.image.conftest import running_image_service
from tests.integration.text.conftest import running_text_service

REPOSITORY = Path(__file__).resolve().parents[3]
CHECKS = ("not_a_server_error,status_code_conformance,content_type_conformance,response_headers_conformance,"
          "response_schema_conformance,unsupported_method,allow_header_conformance")
# Examples per operation, and the text service's cap on new tokens: with them the run takes a few
# minutes on two busy cores (the longer generations only cost time; what they answer is checked
# on shorter ones just the same). The seed makes a failure reproducible.
MAX_EXAMPLES = 15
MAX_NEW_TOKENS = 32


async def test_the_whole_openapi_document_is_the_contract(tmp_path) -> None:
    text_folder = build_tiny_model(tmp_path / "tiny-text", seed=0)
    text_model = load_text_model("tiny", str(text_folder), cache_dir=tmp_path / "text-cache", device="cpu",
                                 dtype="float32", quantization="none")
    image_model = load_image_model("tiny", ModelOptions(source=str(build_tiny_sd(tmp_path / "tiny-sd"))),
                                   cache_dir=tmp_path / "image-cache", device=torch.device("cpu"),
                                   dtype=torch.float32)
    async with embedded_editor(fast_settings(f"sqlite:///{tmp_path / 'editor.db'}")) as editor, \
            running_text_service([text_model], max_new_tokens=MAX_NEW_TOKENS) as text, \
            running_image_service([image_model], tmp_path, max_steps=4, max_pixels=128 * 128) as image:
        settings = gateway_settings(editor.address, text_address=f"127.0.0.1:{text.server.port}",
                                    image_address=image.address)
        async with serve_gateway(settings) as live, httpx.AsyncClient(base_url=live.url, timeout=60) as client:
            user = await register_user(client, "contract")
            st = Path(sys.executable).with_name("st")
            env = {**os.environ, "SCHEMATHESIS_HOOKS": "tests.integration.compat.schemathesis_hooks",
                   "FABULA_CONTRACT_BASE_URL": live.url, "FABULA_CONTRACT_TOKEN": user.token,
                   "PYTHONPATH": str(REPOSITORY)}
            process = await asyncio.create_subprocess_exec(
                str(st), "run", f"{live.url}/openapi.json", "--checks", CHECKS,
                "--max-examples", str(MAX_EXAMPLES), "--phases", "examples,fuzzing",
                "--seed", "1", "--workers", "1", "--request-timeout", "60", "--no-color",
                cwd=REPOSITORY, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
            output, _ = await process.communicate()
            report = output.decode(errors="replace")
            assert process.returncode == 0, report
