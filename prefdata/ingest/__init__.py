"""Ingest of real preference-data formats into canonical `responses` or `pairs` tables, and of prompt-only
sources into `prompts` tables (the input of generation steps).

    from prefdata.ingest import read_source, ingest_to_catalog, FORMATS, detect_format
    res = read_source("uf.jsonl")                       # format auto-detected
    res = read_source("x.parquet", mapping={"prompt": "question", "response": "answer", "score": "rating"})
    res = read_source("problems.jsonl", format="prompts")   # every non-prompt column (e.g. tests) is carried
    res = read_source("x.jsonl", mapping={...}, carry=["source", "license"])   # keep extra columns
    info = ingest_to_catalog(cat, "hh.jsonl", format="hh-rlhf", name="hh")
"""
from prefdata.ingest.detect import detect_format
from prefdata.ingest.registry import FORMATS
from prefdata.ingest.source import IngestResult, read_source
from prefdata.ingest.to_catalog import ingest_to_catalog

__all__ = ["FORMATS", "IngestResult", "detect_format", "ingest_to_catalog", "read_source"]
