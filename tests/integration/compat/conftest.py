"""The real stack for the compatible APIs: the editor (accounts, API tokens), the text service on
a tiny seeded model given a ChatML chat template, and the gateway under uvicorn, all in-process on
free ports. Clients authenticate with a personal API token, as SillyTavern or a script would."""

from __future__ import annotations

from contextlib import asynccontextmanager
from dataclasses import dataclass

import httpx
import pytest

from services.editor.embedded import embedded_editor, fast_settings
from services.text.models import LoadedModel, load_model
from services.text.testing import build_tiny_model
from tests.integration.gateway.harness import gateway_settings, register_user, serve_gateway
from tests.integration.text.conftest import running_text_service

# ChatML, as SmolLM2-Instruct and many others write it.
CHATML = ("{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
          "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


@dataclass
class Compat:
    url: str  # the gateway's base URL
    token: str  # a personal API token
    session: httpx.AsyncClient  # signed in with the user's session
    api: httpx.AsyncClient  # authenticated with the API token
    text: object  # the running text service


@pytest.fixture(scope="session")
def chat_model(tmp_path_factory) -> LoadedModel:
    folder = build_tiny_model(tmp_path_factory.mktemp("tiny-chat") / "tiny-chat", seed=3)
    model = load_model("tiny-chat", str(folder), cache_dir=folder.parent / "cache", device="cpu", dtype="float32",
                       quantization="none")
    model.tokenizer.chat_template = CHATML
    return model


@asynccontextmanager
async def compat_stack(tmp_path, models, *, text_options: dict | None = None, **gateway_overrides):
    async with embedded_editor(fast_settings(f"sqlite:///{tmp_path / 'editor.db'}")) as editor, \
            running_text_service(models, **(text_options or {})) as text:
        settings = gateway_settings(editor.address, text_address=f"127.0.0.1:{text.server.port}",
                                    **gateway_overrides)
        async with serve_gateway(settings) as live, \
                httpx.AsyncClient(base_url=live.url, timeout=30) as session, \
                httpx.AsyncClient(base_url=live.url, timeout=30) as api:
            user = await register_user(session, "tinkerer")
            session.headers.update(user.headers)
            created = await session.post("/user/tokens", json={"name": "compat tests"})
            assert created.status_code == 201, created.text
            token = created.json()["token"]
            api.headers["Authorization"] = f"Bearer {token}"
            yield Compat(url=live.url, token=token, session=session, api=api, text=text)


@pytest.fixture
async def compat(tmp_path, chat_model):
    async with compat_stack(tmp_path, [chat_model]) as running:
        yield running
