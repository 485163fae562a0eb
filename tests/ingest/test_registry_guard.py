"""The own-output registry is pinned by the ledger key: cut, deleted or rewritten, ingest refuses to run (fakes)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from ingest.ledger import Ledger
from ingest.ledger_head import LedgerKey
from ingest.pipeline import Ingestor
from ingest.registry_guard import RegistryPin, RegistryTamperedError
from rag.cli import app
from rag.guardrails.registry import HEADER, HEADER_V2, RECORD, RECORD_V2, OutputRegistry, _crcs
from rag.settings import Settings
from rag.wiring import build_output_registry, content_checks
from tests.conftest import Curator
from tests.fakes import FakeEmbedder, InMemoryStore
from tests.guardrails.test_registry import ANSWER


class World:
    """A knowledge base ingested once with the registry check, and the registry the service appends to."""

    def __init__(self, settings: Settings, corpus: Path) -> None:
        settings.watermark.detect = False
        self.settings, self.corpus, self.store = settings, corpus, InMemoryStore()
        registry = build_output_registry(settings)
        assert registry is not None
        self.registry = registry
        self.pin = RegistryPin(registry, LedgerKey(settings.ledger_key_path))

    def ingest(self) -> dict[str, object]:
        ingestor = Ingestor(self.settings, self.store, FakeEmbedder(), checks=content_checks(self.settings))
        return ingestor.ingest([self.corpus]).as_dict()

    def entries(self) -> int:
        return sum(1 for _ in Ledger(self.settings.ledger_path).entries())


@pytest.fixture
def world(settings: Settings, corpus: Path) -> World:
    world = World(settings, corpus)
    assert world.ingest()["accepted"] == 3
    world.registry.record(ANSWER)  # released between two ingests: three sentences and the whole answer
    assert world.ingest()["skipped_unchanged"] == 3  # the next ingest pins what was appended
    assert world.pin.status().pinned_records == 4
    return world


def refused(world: World) -> RegistryTamperedError:
    before = world.entries()
    with pytest.raises(RegistryTamperedError) as caught:
        world.ingest()
    assert caught.value.code == "registry_tampered" and "rag registry accept --yes" in caught.value.message
    assert world.entries() == before  # nothing written
    return caught.value


def test_the_pin_is_signed_by_the_ledger_key_and_kept_beside_it(world: World, settings: Settings) -> None:
    pins = json.loads(world.pin.path.read_text())
    assert world.pin.path.parent == settings.ledger_key_path.parent != settings.data_dir
    (signed,) = pins.values()
    assert signed["payloadType"].endswith("registry-pin+json") and signed["signatures"]
    world.registry.record(["A new answer the service released after the last ingest ran."])
    assert world.ingest()["rejected"] == 0 and world.pin.status().pinned_records == 5  # growth is normal


def test_a_cut_registry_stops_ingest_until_an_operator_accepts_it(world: World) -> None:
    path = world.registry.path
    path.write_bytes(path.read_bytes()[: len(HEADER) + 2 * RECORD.itemsize])  # two of four records left
    assert "holds 2 records, but 4 were pinned" in refused(world).message
    status = CliRunner().invoke(app, ["registry", "status"])
    assert status.exit_code == 1 and "but 4 were pinned" in status.output
    assert CliRunner().invoke(app, ["registry", "accept"]).exit_code != 0  # needs --yes
    refused(world)
    accepted = CliRunner().invoke(app, ["registry", "accept", "--yes"])
    assert accepted.exit_code == 0 and "2 lost" in accepted.output, accepted.output
    assert world.ingest()["skipped_unchanged"] == 3
    assert CliRunner().invoke(app, ["registry", "status"]).exit_code == 0


def test_a_deleted_registry_stops_ingest(world: World) -> None:
    world.registry.path.unlink()
    assert "is missing, but 4 records were pinned" in refused(world).message


def test_a_rewritten_record_stops_ingest_though_its_crc_would_only_skip_it(world: World) -> None:
    data = bytearray(world.registry.path.read_bytes())
    data[len(HEADER) + 20] ^= 0xFF  # inside the first record: a reader would skip it, failing open
    world.registry.path.write_bytes(bytes(data))
    assert "the first 4 records" in refused(world).message


def test_a_damaged_record_after_the_pin_stops_ingest(world: World) -> None:
    world.registry.record(["A new answer the service released after the last ingest ran."])
    data = bytearray(world.registry.path.read_bytes())
    data[-10] ^= 0xFF
    world.registry.path.write_bytes(bytes(data))
    assert "1 records after the pinned ones fail their CRC" in refused(world).message


def test_a_forged_pin_is_refused(world: World) -> None:
    pins = json.loads(world.pin.path.read_text())
    (name,) = pins
    pins[name]["payload"] = pins[name]["payload"][:-4] + "AAA="
    world.pin.path.write_text(json.dumps(pins))
    assert "not signed by this ledger's key" in refused(world).message


def test_the_pin_survives_a_new_knowledge_base(world: World) -> None:
    reset = CliRunner().invoke(app, ["ledger", "reset", "--yes"])
    assert reset.exit_code == 0, reset.output
    world.store = InMemoryStore()
    world.registry.path.unlink()  # what the service released is still out there
    refused(world)


def test_a_version_2_registry_is_rewritten_in_the_new_format(tmp_path: Path) -> None:
    writer = OutputRegistry(tmp_path / "new.reg")
    new = writer.fingerprint([(1, ANSWER[0])], 1_700_000_000_000)
    old = np.zeros(1, dtype=RECORD_V2)
    for name in ("kind", "words", "time_ms", "sig"):
        old[name] = new[name]
    old["digest"] = new["digest"].tobytes()  # version 2 kept the digest's bytes
    old["crc"] = _crcs(old)
    path = tmp_path / "outputs.reg"
    path.write_bytes(HEADER_V2 + old.tobytes())
    registry = OutputRegistry(path)
    (match,) = registry.matches(ANSWER[0])
    assert match.how == "exact" and match.released_ms == 1_700_000_000_000
    assert path.read_bytes().startswith(HEADER) and path.stat().st_size == len(HEADER) + RECORD.itemsize
    assert registry.matches(ANSWER[0].replace("removes", "deletes"))  # near matches by bigrams still work


def test_ingest_with_the_registry_off_needs_no_pin(settings: Settings, curator: Curator, corpus: Path) -> None:
    settings.registry.enabled = False
    settings.watermark.detect = False
    report = Ingestor(settings, InMemoryStore(), FakeEmbedder(), checks=content_checks(settings)).ingest([corpus])
    assert len(report.accepted) == 3
    assert not LedgerKey(settings.ledger_key_path).path.with_name("ledger.key.registry.json").exists()
