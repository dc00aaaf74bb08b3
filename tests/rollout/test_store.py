"""Persistence on any storage root: state survives a new process, events keep their order, writes are CAS.

Every store test runs twice: on a local folder and on a real S3 API (moto's server, the session's
``s3`` fixture), where the compare-and-swap is the server's conditional PUT.
"""

from __future__ import annotations

import json
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from cluster import files
from cluster.files import WriteConflict
from deployments.rollout.errors import RolloutError
from deployments.rollout.state import Command, Observation, RecordEvent, transition
from deployments.rollout.store import RolloutStore
from tests.rollout.helpers import progressing

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(params=["local", "s3"])
def root(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A rollouts root: a local folder, or a fresh bucket on the session's S3 server."""
    if request.param == "local":
        return str(tmp_path / "rollouts")
    s3 = request.getfixturevalue("s3")
    return f"s3://{s3.bucket()}/rollouts"


def _stored_phase(root: str, rollout_id: str) -> str:
    """The phase as it lies on the root itself (read without the store)."""
    return json.loads(files.read_bytes(files.join(root, "iris", rollout_id, "state.json")))["phase"]


def _recorded(actions: list) -> list[dict]:
    return [a.event for a in actions if isinstance(a, RecordEvent)]


def test_saved_state_and_events_load_back_in_a_fresh_store(root):
    state = progressing()
    new, actions = transition(state, Observation(now=101.0), Command("abort", "alice", "why not"))
    RolloutStore(root, "iris").save(new, _recorded(actions))
    again = RolloutStore(root, "iris")
    assert again.current_id() == new.rollout_id
    assert again.load() == new
    assert again.events(new.rollout_id)[0]["actor"] == "alice"
    assert files.read_bytes(files.join(root, "iris", "current")) == new.rollout_id.encode()


def test_state_is_replaced_in_place_and_events_and_timeline_read_back_in_write_order(root):
    store = RolloutStore(root, "iris")
    state = progressing()
    for n in range(3):
        store.save(state, [{"n": n}, {"n": n, "second": True}])
        store.append_timeline(state.rollout_id, {"at": float(n)})
    folder = files.join(root, "iris", state.rollout_id)   # on S3 itself, not a local look-alike path
    assert [name for name in files.listdir(folder) if not name.startswith(".")] == ["events", "state.json",
                                                                                   "timeline"]
    assert json.loads(files.read_bytes(files.join(folder, "state.json")))["phase"] == "progressing"
    assert [(e["n"], "second" in e) for e in store.events(state.rollout_id)] == [
        (0, False), (0, True), (1, False), (1, True), (2, False), (2, True)]
    assert [p["at"] for p in store.timeline(state.rollout_id)] == [0.0, 1.0, 2.0]


def test_rollout_ids_are_listed_oldest_first_by_creation_not_by_name(root):
    store = RolloutStore(root, "iris")
    older = progressing()
    older.rollout_id, older.created_at = "zz-old", 10.0
    newer = progressing()
    newer.rollout_id, newer.created_at = "aa-new", 20.0
    store.save(older)
    store.save(newer)
    assert RolloutStore(root, "iris").rollout_ids() == ["zz-old", "aa-new"]


def test_no_rollout_yet_loads_none_and_unknown_ids_are_404(root):
    store = RolloutStore(root, "iris")
    assert store.load() is None and store.rollout_ids() == [] and store.events("r1") == []
    with pytest.raises(RolloutError) as err:
        store.load("nope")
    assert err.value.status_code == 404


def test_a_second_writer_of_the_same_rollout_loses_its_save_and_writes_nothing_until_it_reloads(root):
    first, second = RolloutStore(root, "iris"), RolloutStore(root, "iris")
    state = progressing()
    first.save(state)
    assert second.load() == state
    paused, actions = transition(state, Observation(now=101.0), Command("pause", "alice"))
    first.save(paused, _recorded(actions))
    assert second.changed_since_saved()
    aborted, actions = transition(state, Observation(now=101.0), Command("abort", "bob"))
    with pytest.raises(WriteConflict):
        second.save(aborted, _recorded(actions))
    assert RolloutStore(root, "iris").load().phase.value == "paused" == _stored_phase(root, state.rollout_id)
    assert [e["actor"] for e in first.events(state.rollout_id)] == ["alice"]   # the loser's event is not kept
    assert second.load().phase.value == "paused" and not second.changed_since_saved()


def test_two_controllers_starting_rollouts_at_once_claim_the_model_once(root):
    first, second = RolloutStore(root, "iris"), RolloutStore(root, "iris")
    assert first.load() is None and second.load() is None
    first.save(progressing())
    with pytest.raises(WriteConflict):
        second.save(progressing())


def test_two_stores_saving_the_same_rollout_at_the_same_moment_one_wins_and_the_other_conflicts(root):
    """Both read the same generation, then save at once from two threads: the storage's CAS picks one."""
    state = progressing()
    RolloutStore(root, "iris").save(state)
    racers = [RolloutStore(root, "iris"), RolloutStore(root, "iris")]
    for racer in racers:
        racer.load()
    moves = [transition(state, Observation(now=101.0), Command(cmd, actor))[0]
             for cmd, actor in (("pause", "alice"), ("abort", "bob"))]
    barrier = threading.Barrier(2)

    def save(i: int) -> str:
        barrier.wait()
        try:
            racers[i].save(moves[i], [{"actor": moves[i].reason or str(i)}])
        except WriteConflict:
            return "lost"
        return "won"

    with ThreadPoolExecutor(2) as pool:
        outcome = list(pool.map(save, [0, 1]))
    assert sorted(outcome) == ["lost", "won"]
    winner = outcome.index("won")
    assert _stored_phase(root, state.rollout_id) == moves[winner].phase.value
    assert len(RolloutStore(root, "iris").events(state.rollout_id)) == 1   # only the winner's batch


# -- local only ------------------------------------------------------------------------------------------


def test_a_torn_last_line_of_an_earlier_releases_events_file_is_skipped(tmp_path):
    """Earlier releases appended to ``events.jsonl``; that history is still read, before newer batches."""
    store = RolloutStore(tmp_path, "iris")
    state = progressing()
    store.save(state, [{"command": "pause"}])
    (tmp_path / "iris" / state.rollout_id / "events.jsonl").write_text('{"command": "start"}\n{"command": "pro')
    assert store.events(state.rollout_id) == [{"command": "start"}, {"command": "pause"}]


def test_path_traversal_in_ids_is_refused(tmp_path):
    with pytest.raises(RolloutError):
        RolloutStore(tmp_path, "iris").load("../../etc")


def test_rollouts_of_the_serving_app_persist_in_one_folder_per_model_under_the_state_dir(tmp_path):
    """`rayline serve deploy`, the demo and `canary start` build the app config the same way."""
    from cluster.serving import app_config
    from cluster.settings import load_settings
    from deployments.controller import Controller

    settings = load_settings(state_dir=tmp_path)
    cfg = app_config(settings, "iris")
    store = Controller(cfg.state_dir, "iris", rollouts_root=cfg.rollouts_root).store
    assert Path(store.root) == settings.state_dir.absolute() / "rollouts" / "iris"


def test_a_storage_root_puts_rollouts_beside_datasets_and_checkpoints(tmp_path):
    from cluster.serving import app_config
    from cluster.settings import load_settings

    settings = load_settings(state_dir=tmp_path, storage_root="s3://bucket/rayline")
    assert settings.rollouts_root == "s3://bucket/rayline/rollouts"
    assert app_config(settings, "iris").rollouts_root == "s3://bucket/rayline/rollouts"


def test_history_left_in_the_old_doubled_folder_is_moved_to_the_one_folder(tmp_path):
    state = progressing()
    RolloutStore(tmp_path / "rollouts" / "rollouts", "iris").save(state)   # what earlier releases wrote
    store = RolloutStore(tmp_path / "rollouts", "iris")
    assert Path(store.root) == tmp_path / "rollouts" / "iris" and store.load().rollout_id == state.rollout_id
    assert not (tmp_path / "rollouts" / "rollouts").joinpath("iris").exists()
