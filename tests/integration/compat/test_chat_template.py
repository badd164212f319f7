"""ApplyChatTemplate on the text service: the model's own template, and clear refusals."""

from __future__ import annotations

import grpc
import pytest

from fabula.text.v1 import text_pb2
from fabula_wire import read_error_detail
from services.text.models import load_model
from services.text.testing import build_tiny_model
from tests.integration.text.conftest import running_text_service


@pytest.fixture
async def service(chat_model, tmp_path):
    folder = build_tiny_model(tmp_path / "plain", seed=4)
    plain = load_model("plain", str(folder), cache_dir=tmp_path / "cache", device="cpu", dtype="float32",
                       quantization="none")
    async with running_text_service([chat_model, plain]) as running:
        yield running


def _request(model: str, *messages: tuple[str, str]) -> text_pb2.ApplyChatTemplateRequest:
    return text_pb2.ApplyChatTemplateRequest(model=model, messages=[
        text_pb2.ChatMessage(role=role, content=content) for role, content in messages])


async def test_renders_with_the_generation_prompt(service):
    reply = await service.stub.ApplyChatTemplate(_request("tiny-chat", ("user", "Hi")))
    assert reply.prompt == "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"


async def test_refusals_name_the_field(service):
    cases = ((_request("plain", ("user", "Hi")), grpc.StatusCode.FAILED_PRECONDITION, "model"),
             (_request("tiny-chat"), grpc.StatusCode.INVALID_ARGUMENT, "messages"),
             (_request("tiny-chat", ("", "Hi")), grpc.StatusCode.INVALID_ARGUMENT, "messages[0].role"))
    for request, code, field in cases:
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await service.stub.ApplyChatTemplate(request)
        assert raised.value.code() == code, raised.value.details()
        assert read_error_detail(raised.value)[0].field == field
