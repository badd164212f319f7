"""A property-based run of schemathesis over the OpenAPI document's compatible image routes
(AUTOMATIC1111's /sdapi/v1 and NovelAI's /novelai/ai/generate-image), signed in, against the real
gateway and image service on the tiny model: no answer breaks the schema or answers with a status
it does not document, nothing answers 5xx, and 405 answers carry Allow.

The `st` command runs in a subprocess so that the gateway keeps serving in this test's event loop.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import httpx

from services.editor.embedded import embedded_editor, fast_settings
from tests.integration.gateway.harness import gateway_settings, register_user, serve_gateway
from tests.integration.image.conftest import running_image_service

# positive_data_acceptance (no schema-valid request refused) is not among them yet: JSON Schema
# cannot say "a decodable PNG" of the image fields, and the server's configured limits (max_steps,
# max_pixels, the models' sizes) are not stated in the document.
CHECKS = ("not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance,"
          "unsupported_method")
# Few examples per operation keep the run to a minute or two on two cores; the seed makes a
# failure reproducible.
MAX_EXAMPLES = 15


async def test_compatible_image_routes_keep_their_openapi_contract(tmp_path, builtin_tiny) -> None:
    async with embedded_editor(fast_settings(f"sqlite:///{tmp_path / 'editor.db'}")) as editor, \
            running_image_service([builtin_tiny], tmp_path, max_steps=4, max_pixels=128 * 128) as image:
        settings = gateway_settings(editor.address, image_address=image.address)
        async with serve_gateway(settings) as live, httpx.AsyncClient(base_url=live.url, timeout=60) as client:
            user = await register_user(client, "contract")
            st = Path(sys.executable).with_name("st")
            process = await asyncio.create_subprocess_exec(
                str(st), "run", f"{live.url}/openapi.json", "--checks", CHECKS,
                "--include-path-regex", "^/(sdapi/v1/|novelai/ai/generate-image)",
                "--header", f"Authorization: Bearer {user.token}", "--max-examples", str(MAX_EXAMPLES),
                "--seed", "1", "--workers", "1", "--request-timeout", "60", "--no-color",
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
            output, _ = await process.communicate()
            report = output.decode(errors="replace")
            assert process.returncode == 0, report
