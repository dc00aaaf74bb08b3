"""Persistence: state survives a new process, events append, writes are atomic."""

from __future__ import annotations

import json

import pytest

from cluster.files import WriteConflict
from deployments.rollout.errors import RolloutError
from deployments.rollout.state import Command, Observation, RecordEvent, transition
from deployments.rollout.store import RolloutStore
from tests.rollout.helpers import progressing


def test_saved_state_and_events_load_back_in_a_fresh_store(tmp_path):
    state = progressing()
    new, actions = transition(state, Observation(now=101.0), Command("abort", "alice", "why not"))
    RolloutStore(tmp_path, "iris").save(new, [a.event for a in actions if isinstance(a, RecordEvent)])
    again = RolloutStore(tmp_path, "iris")
    assert again.current_id() == new.rollout_id
    assert again.load() == new
    assert again.events(new.rollout_id)[0]["actor"] == "alice"


def test_state_file_is_replaced_atomically_and_leaves_no_temporary_files(tmp_path):
    store = RolloutStore(tmp_path, "iris")
    state = progressing()
    for _ in range(3):
        store.save(state)
    folder = store.root / state.rollout_id
    assert sorted(p.name for p in folder.iterdir() if not p.name.endswith(".lock")) == ["state.json"]
    assert json.loads((folder / "state.json").read_text())["phase"] == "progressing"


def test_a_torn_last_event_line_is_skipped(tmp_path):
    store = RolloutStore(tmp_path, "iris")
    state = progressing()
    store.save(state, [{"command": "start"}])
    with open(store.root / state.rollout_id / "events.jsonl", "a") as fh:
        fh.write('{"command": "pro')
    assert store.events(state.rollout_id) == [{"command": "start"}]


def test_no_rollout_yet_loads_none_and_unknown_ids_are_404(tmp_path):
    store = RolloutStore(tmp_path, "iris")
    assert store.load() is None
    with pytest.raises(RolloutError) as err:
        store.load("nope")
    assert err.value.status_code == 404


def test_path_traversal_in_ids_is_refused(tmp_path):
    with pytest.raises(RolloutError):
        RolloutStore(tmp_path, "iris").load("../../etc")


def test_rollouts_of_the_serving_app_persist_in_one_folder_per_model_under_the_state_dir(tmp_path):
    """`rayline serve deploy`, the demo and `canary start` build the app config the same way."""
    from cluster.serving import app_config
    from cluster.settings import load_settings

    settings = load_settings(state_dir=tmp_path)
    cfg = app_config(settings, "iris")
    assert RolloutStore(cfg.state_dir, "iris").root == settings.state_dir.absolute() / "rollouts" / "iris"


def test_history_left_in_the_old_doubled_folder_is_moved_to_the_one_folder(tmp_path):
    state = progressing()
    RolloutStore(tmp_path / "rollouts", "iris").save(state)   # what earlier releases wrote
    store = RolloutStore(tmp_path, "iris")
    assert store.root == tmp_path / "rollouts" / "iris" and store.load().rollout_id == state.rollout_id
    assert not (tmp_path / "rollouts" / "rollouts").joinpath("iris").exists()


def test_a_second_writer_of_the_same_rollout_loses_its_save_and_writes_nothing_until_it_reloads(tmp_path):
    first, second = RolloutStore(tmp_path, "iris"), RolloutStore(tmp_path, "iris")
    state = progressing()
    first.save(state)
    assert second.load() == state
    paused, actions = transition(state, Observation(now=101.0), Command("pause", "alice"))
    first.save(paused, [a.event for a in actions if isinstance(a, RecordEvent)])
    assert second.changed_since_saved()
    aborted, actions = transition(state, Observation(now=101.0), Command("abort", "bob"))
    with pytest.raises(WriteConflict):
        second.save(aborted, [a.event for a in actions if isinstance(a, RecordEvent)])
    assert RolloutStore(tmp_path, "iris").load().phase.value == "paused"
    assert [e["actor"] for e in first.events(state.rollout_id)] == ["alice"]   # the loser's event is not kept
    assert second.load().phase.value == "paused" and not second.changed_since_saved()


def test_two_controllers_starting_rollouts_at_once_claim_the_model_once(tmp_path):
    first, second = RolloutStore(tmp_path, "iris"), RolloutStore(tmp_path, "iris")
    assert first.load() is None and second.load() is None
    first.save(progressing())
    with pytest.raises(WriteConflict):
        second.save(progressing())
