import json
import logging
import os

import pytest

from dspex.exceptions import RegistryPersistenceError
from registry.persistence import RegistryFile, read_registry_file, write_registry_file
from registry.store import ModuleRegistry


@pytest.fixture
def path(tmp_path):
    return tmp_path / "state" / "registry.json"


def _trained(path):
    registry = ModuleRegistry(discover=False, path=path, min_samples=3)
    registry.register_user_module(
        "acme.flows:Summarise", capabilities=["summarisation"], estimated_duration_ms=80
    )
    registry.register_module(
        registry.get_module("dspy.Predict").model_copy(update={"estimated_duration_ms": 40})
    )
    for ms in (10.0, 12.0, 14.0):
        registry.record_duration("dspy.ChainOfThought", ms, pool="general", input_size="large")
    registry.record_duration("acme.flows:Summarise", 3.0, success=False)
    return registry


def test_save_and_load_round_trip(path):
    saved = _trained(path)
    assert saved.save() == path
    loaded = ModuleRegistry(discover=False, path=path, min_samples=3)
    loaded.load()
    assert loaded.get_module("acme.flows:Summarise") == saved.get_module("acme.flows:Summarise")
    assert loaded.find_by_capability("summarisation") == ["acme.flows:Summarise"]
    assert loaded.estimate_duration("dspy.Predict") == 40  # a persisted update of a core entry
    assert loaded.estimate("dspy.ChainOfThought", "large") == saved.estimate("dspy.ChainOfThought", "large")
    assert loaded.estimate("dspy.ChainOfThought", "large").source == "learned"
    assert loaded.usage_stats("dspy.ChainOfThought") == saved.usage_stats("dspy.ChainOfThought")
    assert loaded.usage_stats("acme.flows:Summarise").failures == 1
    # Only what the catalogue cannot rebuild is stored.
    document = json.loads(path.read_text())
    assert document["format"] == "dspex-registry" and document["version"] == 1
    assert sorted(m["name"] for m in document["modules"]) == ["acme.flows:Summarise", "dspy.Predict"]


def test_load_replaces_state_and_keeps_the_catalogue(path):
    _trained(path).save()
    registry = ModuleRegistry(discover=False, path=path, min_samples=3)
    registry.register_user_module("other.mod:Gone")
    registry.load()
    assert "other.mod:Gone" not in registry
    assert len(registry) == 7  # six core modules and the persisted user module


def test_save_is_atomic_and_leaves_no_temporary_files(path):
    registry = _trained(path)
    registry.save()
    registry.save()
    assert sorted(p.name for p in path.parent.iterdir()) == ["registry.json", "registry.json.lock"]


def test_a_failed_write_keeps_the_old_file(path, monkeypatch):
    _trained(path).save()
    before = path.read_bytes()

    def broken_replace(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(RegistryPersistenceError, match=f"cannot write registry file {path}"):
        ModuleRegistry(discover=False, path=path).save()
    assert path.read_bytes() == before
    assert sorted(p.name for p in path.parent.iterdir()) == ["registry.json", "registry.json.lock"]


def test_an_unwritable_location_is_a_clear_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(RegistryPersistenceError, match="cannot write registry file"):
        ModuleRegistry(discover=False).save(blocker / "registry.json")


@pytest.mark.parametrize(
    "content",
    [
        b"{not json",
        b"\xff\xfe\x00garbage",
        b"[]",
        json.dumps({"format": "something-else", "version": 1}).encode(),
        json.dumps({"format": "dspex-registry", "version": 1, "modules": [{"name": "x"}]}).encode(),
        json.dumps(
            {
                "format": "dspex-registry",
                "version": 1,
                "usage": [{"module": "dspy.Predict", "calls": 1, "failures": 2, "durations_ms": []}],
            }
        ).encode(),
        json.dumps(
            {
                "format": "dspex-registry",
                "version": 1,
                "observations": [
                    {"module": "dspy.Predict", "pool": "general", "bucket": "normal", "samples_ms": [-1]}
                ],
            }
        ).encode(),
    ],
)
def test_a_corrupt_file_is_an_error_naming_it_and_a_backup_is_kept(path, content):
    path.parent.mkdir(parents=True)
    path.write_bytes(content)
    registry = ModuleRegistry(discover=False, path=path)
    with pytest.raises(RegistryPersistenceError) as caught:
        registry.load()
    message = str(caught.value)
    assert str(path) in message and "corrupt" in message
    backups = list(path.parent.glob("registry.json.corrupt-*"))
    assert len(backups) == 1 and str(backups[0]) in message
    assert backups[0].read_bytes() == content
    assert path.read_bytes() == content  # never silently reset


def test_loading_a_missing_file_is_an_error(path):
    with pytest.raises(RegistryPersistenceError, match="no registry file"):
        ModuleRegistry(discover=False, path=path).load()


def test_state_of_vanished_modules_is_dropped_with_a_warning(path, caplog):
    data = RegistryFile.model_validate(
        {
            "observations": [
                {"module": "dspy.Vanished", "pool": "gpu", "bucket": "small", "samples_ms": [1.0]}
            ],
            "usage": [{"module": "dspy.Predict", "calls": 2, "failures": 0, "durations_ms": [1.0, 3.0]}],
        }
    )
    write_registry_file(path, data)
    assert read_registry_file(path) == data
    registry = ModuleRegistry(discover=False, path=path)
    with caplog.at_level(logging.WARNING, logger="registry.store"):
        registry.load()
    assert "dspy.Vanished" in caplog.text
    assert registry.usage_stats("dspy.Predict").p50_ms == 2.0
