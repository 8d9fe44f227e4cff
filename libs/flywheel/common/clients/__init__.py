"""Typed async clients of Flywheel's services, for services, CLIs, the demo and tests.

- `ports`: what use cases depend on (`ModelRegistry`, `FeatureSource`), free of gRPC, so they can be faked;
- `registry`: `RegistryClient` (versions by number, alias or tag; chunked, sha256-checked uploads and
  downloads; lineage and metrics);
- `featurestore`: `FeatureStoreClient` (point-in-time training sets, online lookups) and the
  FeatureValue conversions;
- `retriever`: `RetrieverClient` (collections, ingestion of raw files, hybrid retrieval, documents) and
  the builders of its inputs (`file_input`, `document_input`, `metadata_filter`);
- `guard`: `GuardClient` (`ContentGuard` port: input checks, output checks whole or in streamed windows,
  an application's policy);
- `generation`: `GenerationClient` (`TextGenerator` port: chat answers from inference's `Generate`, optionally
  pinned to a model or prompt version, as the evaluator's LLM gate asks).

Every client takes `address` and `auth` (`flywheel.common.rpc.ClientAuth`: bearer token, TLS), gives
every call a deadline, and raises domain errors (`flywheel.common.rpc.domain_error`), never gRPC ones.
"""
