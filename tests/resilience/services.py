"""The editor, text and image services in-process on free ports, over the tiny seeded models (as
the integration tests start them), each as a fuzzing `Target` with valid seed requests and a
signed-in user's metadata."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path

import grpc
import torch

from fabula.editor.v1 import editor_pb2 as editor_pb
from fabula.editor.v1 import editor_pb2_grpc
from fabula.image.v1 import image_pb2 as image_pb
from fabula.text.v1 import text_pb2 as text_pb
from services.editor.embedded import embedded_editor, fast_settings
from services.toolkit.server import start_server
from tests.resilience.fuzzing import Target

FAST_KDF = editor_pb.KdfParams(opslimit=1, memlimit=8192)


def editor_seeds() -> dict[str, object]:
    """Valid requests (for a signed-in user, with wrong keys where a right one would do harm)."""
    story = editor_pb.OBJECT_TYPE_STORY
    return {
        "GetSalt": editor_pb.GetSaltRequest(username="fuzz-user"),
        "Register": editor_pb.RegisterRequest(username="fuzz-new", salt=os.urandom(16), kdf=FAST_KDF,
                                              auth_key=os.urandom(32), keystore=b"keystore"),
        "Login": editor_pb.LoginRequest(username="fuzz-user", auth_key=os.urandom(32)),
        "ChangePassword": editor_pb.ChangePasswordRequest(
            old_auth_key=os.urandom(32), new_salt=os.urandom(16), new_kdf=FAST_KDF, new_auth_key=os.urandom(32),
            keystore=b"keystore", expected_keystore_change_index=1),
        "DeleteAccount": editor_pb.DeleteAccountRequest(auth_key=os.urandom(32)),
        "PutKeystore": editor_pb.PutKeystoreRequest(keystore=b"keystore", expected_change_index=1),
        "PutObject": editor_pb.PutObjectRequest(type=story, id="fuzz", data=b"data", expected_change_index=0),
        "GetObject": editor_pb.GetObjectRequest(type=story, id="fuzz"),
        "ListObjects": editor_pb.ListObjectsRequest(type=story, page_size=10),
        "DeleteObject": editor_pb.DeleteObjectRequest(type=story, id="absent", expected_change_index=1),
        "ImportAccount": editor_pb.ImportAccountRequest(chunk=b"not a tar", expected_keystore_change_index=1),
    }


def text_seeds(model: str) -> dict[str, object]:
    spec = text_pb.GenerationSpec(model=model, prompt="Once upon a time", max_new_tokens=2, seed=1,
                                  sampling=text_pb.SamplingParameters(temperature=1.0, top_k=5))
    context = text_pb.GenerationSpec(model=model, max_new_tokens=2, context=text_pb.StoryContext(
        story="The knight rode on.", memory="A story.", authors_note="Dark.", authors_note_depth=1,
        max_context_tokens=64, lorebook=[text_pb.LorebookEntry(name="k", text="Knights.", keys=["knight"],
                                                               token_budget=8)]))
    return {
        "Generate": text_pb.GenerateRequest(spec=spec),
        "GenerateStream": text_pb.GenerateStreamRequest(spec=context),
        "Tokenize": text_pb.TokenizeRequest(model=model, text="hello"),
        "Detokenize": text_pb.DetokenizeRequest(model=model, token_ids=[1, 2, 3]),
        "CountTokens": text_pb.CountTokensRequest(model=model, texts=["hello"]),
    }


def image_seeds(model: str) -> dict[str, object]:
    params = image_pb.GenerationParams(model=model, prompt="a red cube", width=64, height=64, steps=1, seed=1,
                                       n_images=1)
    return {
        "Generate": image_pb.GenerateRequest(params=params, txt2img=image_pb.TextToImage()),
        "Tokenize": image_pb.TokenizeRequest(model=model, prompt="a red cube"),
    }


class SignedIn:
    """A registered editor user whose token every call carries. Logout gets a fresh session of
    its own each time, so the fuzzing never signs the user out of the calls that follow."""

    def __init__(self, stub: editor_pb2_grpc.EditorServiceStub, username: str) -> None:
        self._stub, self._username = stub, username
        self._auth_key = os.urandom(32)
        self._token = ""

    async def register(self) -> None:
        reply = await self._stub.Register(editor_pb.RegisterRequest(
            username=self._username, salt=os.urandom(16), kdf=FAST_KDF, auth_key=self._auth_key,
            keystore=b"keystore"))
        self._token = reply.session.token

    @property
    def token(self) -> str:
        return self._token

    async def metadata(self, method: str) -> tuple[tuple[str, str], ...]:
        token = self._token
        if method == "Logout":
            login = editor_pb.LoginRequest(username=self._username, auth_key=self._auth_key)
            token = (await self._stub.Login(login)).session.token
        return (("authorization", f"Bearer {token}"),)


@asynccontextmanager
async def editor_target(tmp: Path) -> AsyncIterator[Target]:
    async with embedded_editor(fast_settings(f"sqlite:///{tmp / 'editor.db'}")) as editor, \
            grpc.aio.insecure_channel(editor.address) as channel:
        user = SignedIn(editor_pb2_grpc.EditorServiceStub(channel), "fuzz-user")
        await user.register()
        seeds = editor_seeds()
        # ObjectData carries the session in each message, not in the call's metadata.
        seeds["ObjectData"] = editor_pb.ObjectDataRequest(
            request_id=1, authorization=f"Bearer {user.token}", timeout_ms=10_000,
            put_object=editor_pb.PutObjectRequest(type=editor_pb.OBJECT_TYPE_STORY, id="fuzz-streamed",
                                                  data=b"data", expected_change_index=0))
        yield Target(service=editor_pb.DESCRIPTOR.services_by_name["EditorService"], channel=channel,
                     seeds=seeds, metadata=user.metadata)


@asynccontextmanager
async def text_target(tmp: Path) -> AsyncIterator[Target]:
    from services.text.generator import TextGenerator
    from services.text.models import load_model
    from services.text.scheduler import SchedulerConfig
    from services.text.server import registrar
    from services.text.settings import TextSettings
    from services.text.testing import build_tiny_model

    folder = build_tiny_model(tmp / "tiny-text", seed=0)
    model = load_model("tiny", str(folder), cache_dir=tmp / "text-cache", device="cpu", dtype="float32",
                       quantization="none")
    settings = TextSettings(models={"tiny": model.source}, max_batch_size=4, max_queue=16, max_new_tokens=64,
                            warmup_tokens=2)
    generator = TextGenerator(settings)
    generator.add_model(model, SchedulerConfig(max_batch_size=4, max_queue=16))
    server = await start_server(registrar(generator), serving=False)
    await generator.warm_up()
    await server.set_serving(True)
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            yield Target(service=text_pb.DESCRIPTOR.services_by_name["TextService"], channel=channel,
                         seeds=text_seeds("tiny"))
    finally:
        await server.stop(0)
        generator.close()


@asynccontextmanager
async def image_target(tmp: Path) -> AsyncIterator[Target]:
    from services.image.generator import ImageGenerator
    from services.image.models import load_model
    from services.image.server import registrar
    from services.image.settings import ImageSettings, ModelOptions
    from services.image.tiny import build_tiny_sd

    folder = build_tiny_sd(tmp / "tiny-sd")
    model = load_model("tiny", ModelOptions(source=str(folder)), cache_dir=tmp / "image-cache",
                       device=torch.device("cpu"), dtype=torch.float32)
    settings = ImageSettings(models={"tiny": model.source}, cache_dir=tmp / "image-cache", backend="eager",
                             warmup_steps=0, max_batch_images=4, max_queue=8)
    generator = ImageGenerator(settings)
    generator.add_model(model)
    server = await start_server(registrar(generator))
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            yield Target(service=image_pb.DESCRIPTOR.services_by_name["ImageService"], channel=channel,
                         seeds=image_seeds("tiny"))
    finally:
        await server.stop(0)
        generator.close()


@asynccontextmanager
async def all_targets(tmp: Path) -> AsyncIterator[list[Target]]:
    """Editor, text and image, started and signed in; stopped when the block ends."""
    async with AsyncExitStack() as stack:
        targets = [await stack.enter_async_context(start(tmp)) for start in (editor_target, text_target,
                                                                              image_target)]
        yield targets
