"""LLMs in a running inference: a tiny causal LM registered (kind llm) and promoted in the session registry
is loaded and generates through the Python API the doors use; a LoRA adapter (kind adapter, lineage
naming the base version) promoted later is hot-loaded onto the same engine, a new adapter version
replaces it under load without a failed request, and losing its champion unloads it."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import torch

from flywheel.common.errors import NotFound
from flywheel.common.model_building import model_building
from flywheel.inference.config import InferenceSettings
from flywheel.inference.llm.loading import load_model_dir, render_chat
from flywheel.inference.llm.sampling import SamplingParams
from flywheel.inference.main import InferenceApp
from flywheel.inference.testing import build_tiny_adapter_artifact, build_tiny_llm_artifact
from flywheel.proto.events.v1 import common_pb2
from flywheel.proto.registry.v1 import registry_service_pb2 as rpb
from tests import polling
from tests.integration import registry_client
from tests.service_helpers import shared_settings

pytestmark = pytest.mark.integration

U = uuid.uuid4().hex[:8]
BASE, ADAPTER, PREDICTIVE = f"tiny-llm-{U}", f"tiny-lora-{U}", f"unused-{U}"
GREEDY = SamplingParams(temperature=0.0, max_tokens=20)
CHAT = [{"role": "system", "content": "You answer from the bank's documents."},
        {"role": "user", "content": "How do I freeze my card?"}]


async def until(predicate: Any, what: str) -> Any:
    async def check() -> Any:
        return predicate()
    return await polling.eventually(check, what=what)


async def promote(registry: Any, name: str, version: int) -> None:
    await registry.SetAlias(rpb.SetAliasRequest(model_name=name, alias="champion", version=version))


def served(app: InferenceApp, name: str) -> int:
    assert app.llm is not None
    try:
        return app.llm.model(name).version
    except Exception:
        return 0


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("tiny-llm-artifacts")
    base = build_tiny_llm_artifact(root / "base", seed=3)
    return {"dir": root / "base", "base": base,
            "a": build_tiny_adapter_artifact(root / "base", root / "a", seed=4),
            "b": build_tiny_adapter_artifact(root / "base", root / "b", seed=5)}


@pytest.fixture(scope="module")
async def app(infra, registry, registry_app, tiny, tmp_path_factory) -> AsyncIterator[InferenceApp]:  # type: ignore[no-untyped-def]
    mv = await registry_client.register(registry, BASE, tiny["base"], kind=common_pb2.MODEL_KIND_LLM,
                                        framework="transformers")
    await promote(registry, BASE, mv.version)
    settings = InferenceSettings(**shared_settings(infra), http_port=0, registry_addr=registry_app.address,
                                 models=[BASE, ADAPTER, PREDICTIVE], db_schema=f"inference_{U}",
                                 consumer_group=f"inference-{U}", allow_anonymous_predict=True,
                                 llm_cache_dir=Path(tmp_path_factory.mktemp("llm-cache")))
    application = InferenceApp(settings)
    await application.start()
    yield application
    await application.stop()


def hf_greedy(directory: Path, ids: list[int], adapter: Path | None = None) -> list[int]:
    model, _ = load_model_dir(directory)
    if adapter is not None:
        from peft import PeftModel

        with model_building():
            model = PeftModel.from_pretrained(model, str(adapter))
    with torch.inference_mode():
        out = model.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                             max_new_tokens=20, do_sample=False)
    return out[0, len(ids):].tolist()


async def test_a_promoted_llm_is_loaded_and_generates(app, tiny) -> None:  # type: ignore[no-untyped-def]
    assert app.llm is not None
    await until(lambda: served(app, BASE), f"{BASE} served")
    info = app.llm.model(BASE)
    assert (info.kind, info.base_name, info.context_length, info.quantization) == ("llm", BASE, 256, "none")
    assert BASE not in app.dataplane.slots  # not an OIP model
    # Configured names without a champion yet are listed as unavailable; the LLM is not an OIP model.
    assert BASE not in {e.name for e in app.dataplane.repository_index()}
    completion = await app.llm.generate(BASE, messages=CHAT, params=GREEDY)
    _, tokenizer = load_model_dir(tiny["dir"])
    assert completion.token_ids == hf_greedy(tiny["dir"], render_chat(tokenizer, CHAT))
    assert completion.usage.prompt_tokens == len(render_chat(tokenizer, CHAT))
    chunks = [c async for c in app.llm.submit(BASE, prompt="The bank", params=GREEDY)]
    assert chunks[-1].finish_reason in ("stop", "length") and chunks[-1].usage is not None
    with pytest.raises(NotFound, match=BASE):
        app.llm.submit("no-such-llm", messages=CHAT)


async def test_adapters_hot_load_next_to_the_base_and_swap_under_load(app, registry, tiny, tmp_path) -> None:  # type: ignore[no-untyped-def]
    assert app.llm is not None
    await until(lambda: served(app, BASE), f"{BASE} served")
    base_version = app.llm.model(BASE).version
    engine = app.llm.engine(BASE)
    lineage = common_pb2.Lineage(base_model=common_pb2.ModelRef(name=BASE, version=base_version))
    a = await registry_client.register(registry, ADAPTER, tiny["a"], kind=common_pb2.MODEL_KIND_LORA_ADAPTER,
                                       framework="peft", lineage=lineage)
    await promote(registry, ADAPTER, a.version)
    await until(lambda: served(app, ADAPTER) == a.version, "adapter v1 served")
    assert app.llm.engine(ADAPTER) is engine  # the base was not reloaded
    assert app.llm.model(ADAPTER).kind == "adapter"
    base_answer = (await app.llm.generate(BASE, messages=CHAT, params=GREEDY)).token_ids
    first = (await app.llm.generate(ADAPTER, messages=CHAT, params=GREEDY)).token_ids
    assert first != base_answer

    # Promote a second adapter version while base and adapter requests stream: none fails.
    b = await registry_client.register(registry, ADAPTER, tiny["b"], kind=common_pb2.MODEL_KIND_LORA_ADAPTER,
                                       framework="peft", lineage=lineage)
    answers: dict[str, list[list[int]]] = {BASE: [], ADAPTER: []}
    done = asyncio.Event()

    async def traffic(name: str) -> None:
        while not done.is_set():
            answers[name].append((await app.llm.generate(name, messages=CHAT, params=GREEDY)).token_ids)

    workers = [asyncio.create_task(traffic(n)) for n in (BASE, BASE, ADAPTER)]
    await until(lambda: len(answers[ADAPTER]) >= 2, "adapter traffic")
    await promote(registry, ADAPTER, b.version)
    await until(lambda: served(app, ADAPTER) == b.version, "adapter v2 served")
    count = len(answers[ADAPTER])
    await until(lambda: len(answers[ADAPTER]) >= count + 2, "traffic on v2")
    done.set()
    await asyncio.gather(*workers)  # raises if any request failed
    second = (await app.llm.generate(ADAPTER, messages=CHAT, params=GREEDY)).token_ids
    assert second != first
    assert all(x == base_answer for x in answers[BASE])
    assert all(x in (first, second) for x in answers[ADAPTER])
    assert engine.stats.failed == 0
    assert app.llm.engine(ADAPTER) is engine
    await until(lambda: len(engine.adapters) == 1, "the replaced adapter version unloaded")

    # The adapter loses its champion: unloaded, the base goes on.
    await registry.DeleteAlias(rpb.DeleteAliasRequest(model_name=ADAPTER, alias="champion"))
    await until(lambda: not served(app, ADAPTER) and not engine.adapters, "adapter unloaded")
    with pytest.raises(NotFound):
        app.llm.submit(ADAPTER, messages=CHAT)
    assert (await app.llm.generate(BASE, messages=CHAT, params=GREEDY)).token_ids == base_answer


async def test_registering_the_base_twice_finds_the_first_version(infra, registry_app, tiny, tmp_path) -> None:  # type: ignore[no-untyped-def]
    import hashlib

    from flywheel.common.clients.registry import RegistryClient
    from flywheel.inference.llm.base import BaseModelFiles, register_base

    tar = tmp_path / "base.tar"
    tar.write_bytes(tiny["base"])
    files = BaseModelFiles(tiny["dir"], tar, hashlib.sha256(tiny["base"]).hexdigest(), len(tiny["base"]))
    client = RegistryClient(registry_app.address, auth=infra.tokens.auth("admin"))
    try:
        first, new = await register_base(client, files, name=f"base-{U}")
        again, new_again = await register_base(client, files, name=f"base-{U}")
    finally:
        await client.close()
    assert new and not new_again and again.version == first.version
    assert (first.kind, first.framework, first.artifact.sha256) == (common_pb2.MODEL_KIND_LLM, "transformers",
                                                                    files.sha256)
