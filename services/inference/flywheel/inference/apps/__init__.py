"""LLM applications in inference: an application binds a prompt template (a registry name + alias), a served
model (an LLM or a LoRA adapter, by name: its champion serves), a retrieval collection of a tenant with its
retrieval settings, and a guard policy name; `/v1/chat/completions` and gRPC `Generate` with `model` = the
application's name answer from the collection, with citations.

    domain.py     Application and its retrieval settings, parsed from and written to JSON (no I/O)
    store.py      the applications table in inference's schema (SQL)
    catalog.py    every replica's in-memory copy, refreshed when the table's revision moves; create/replace/delete
    prompts.py    prompt template versions from the registry, following alias moves (models.promoted)
    grounding.py  the use case: retrieve for the last user turn, decide whether anything supports an answer,
                  fit the passages into the model's context, render the template; refusal otherwise
    http.py       the operator REST API (/v1/applications) and the OpenAI-shaped answers of application calls
"""
