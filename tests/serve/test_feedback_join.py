"""Signed request ids, the feedback join and its store, without Ray: what any router replica reads back from an id."""

from __future__ import annotations

import asyncio

import pytest

from deployments.feedback import FeedbackStore, GroupCommit, outcomes, parse_body
from deployments.payload import PayloadError
from deployments.request_ids import MAX_EMBEDDED_BYTES, RequestIdError, derive_key, issue, verify
from deployments.window import RollingWindow, WindowRecorder

KEY = derive_key("admin-token")
DAY = 86400.0


def test_an_id_carries_variant_version_time_and_predictions_back_to_any_holder_of_the_key():
    rid = issue(KEY, "candidate", "7", ["yes"], served_at=1000.0)
    served = verify(derive_key("admin-token"), rid, now=1000.0 + 5 * DAY, ttl_s=30 * DAY)
    assert (served.variant, served.version, served.served_at, served.count, served.predictions) == \
        ("candidate", "7", 1000, 1, ["yes"])
    assert issue(KEY, "candidate", "7", ["yes"], 1000.0) != rid   # a nonce: two responses, two ids


@pytest.mark.parametrize("tamper", [
    lambda rid: rid[:-2] + ("AA" if rid[-2:] != "AA" else "BB"),   # another signature
    lambda rid: rid.replace("r1.", "r1.x", 1),                       # another payload
    lambda rid: "garbage",
])
def test_a_forged_or_edited_id_is_refused(tamper):
    rid = issue(KEY, "baseline", "1", [0.5], 1000.0)
    with pytest.raises(RequestIdError) as caught:
        verify(KEY, tamper(rid), 1000.0, 30 * DAY)
    assert caught.value.status == 422


def test_an_id_signed_with_another_key_or_past_its_ttl_is_refused():
    rid = issue(KEY, "baseline", "1", [0.5], 1000.0)
    with pytest.raises(RequestIdError, match="signature"):
        verify(derive_key("other-token"), rid, 1000.0, 30 * DAY)
    with pytest.raises(RequestIdError, match="expired") as caught:
        verify(KEY, rid, 1000.0 + 31 * DAY, 30 * DAY)
    assert caught.value.status == 410


def test_labels_values_and_rewards_join_to_their_outcomes_by_index():
    served = verify(KEY, issue(KEY, "candidate", "2", ["yes", "no", 3.5], 0.0), 0.0, DAY)
    assert outcomes(served, parse_body({"request_id": "x", "index": 1, "label": "no"})) == {"correct": 1.0}
    assert outcomes(served, parse_body({"request_id": "x", "label": "no"})) == {"correct": 0.0}
    assert outcomes(served, parse_body({"request_id": "x", "index": 2, "value": 4})) == {"abs_error": 0.5}
    assert outcomes(served, parse_body({"request_id": "x", "reward": -1})) == {"reward": -1.0}
    with pytest.raises(PayloadError, match="had 3 instance") as caught:
        outcomes(served, parse_body({"request_id": "x", "index": 3, "reward": 1}))
    assert caught.value.field == "index"


def test_a_batch_of_predictions_travels_compressed_in_its_id():
    predictions = ["yes", "no"] * 64
    rid = issue(KEY, "baseline", "1", predictions, 0.0)
    assert len(rid) < len(str(predictions)) and verify(KEY, rid, 0.0, DAY).predictions == predictions


def test_a_batch_too_large_to_embed_still_joins_rewards_but_not_labels():
    big = ["x" * 100] * (MAX_EMBEDDED_BYTES // 100 + 1)
    served = verify(KEY, issue(KEY, "baseline", "1", big, 0.0), 0.0, DAY)
    assert served.predictions is None and served.count == len(big)
    assert outcomes(served, parse_body({"request_id": "x", "index": 5, "reward": 1})) == {"reward": 1.0}
    with pytest.raises(PayloadError, match="only a reward"):
        outcomes(served, parse_body({"request_id": "x", "label": "x"}))


@pytest.mark.parametrize(("body", "field"), [
    ({"label": "yes"}, "request_id"),
    ({"request_id": "x"}, "body"),
    ({"request_id": "x", "label": "a", "reward": 1}, "body"),
    ({"request_id": "x", "index": -1, "label": "a"}, "index"),
    ({"request_id": "x", "reward": "high"}, "reward"),
    ({"request_id": "x", "label": "a", "colour": 1}, "colour"),
    (["not", "an", "object"], "body"),
])
def test_a_bad_feedback_body_is_a_422_naming_the_field(body, field):
    with pytest.raises(PayloadError) as caught:
        parse_body(body)
    assert caught.value.status == 422 and caught.value.field == field


def test_feedback_is_stored_in_batches_read_back_in_order_and_duplicates_keep_the_first(tmp_path):
    store = FeedbackStore(str(tmp_path), "m")

    async def post_many() -> None:
        writer = GroupCommit(store)
        await asyncio.gather(*(writer.write({"request_id": f"r{i % 30}", "index": 0, "n": i}) for i in range(40)))

    asyncio.run(post_many())
    batches = list((tmp_path / "m" / "feedback").iterdir())
    assert 1 <= len(batches) < 40   # group commit: posts waiting on one write share the next
    records = store.read()
    assert [r["request_id"] for r in records] == [f"r{i}" for i in range(30)] and records[0]["n"] == 0


def test_the_stored_signing_key_is_created_once_and_shared(tmp_path):
    assert FeedbackStore(str(tmp_path), "m").signing_key() == FeedbackStore(str(tmp_path), "m").signing_key()


def test_outcomes_reach_the_report_and_the_rolling_summary():
    recorder = WindowRecorder()
    recorder.record_outcomes("candidate", "2", {"correct": 1.0})
    recorder.record_outcomes("candidate", "2", {"correct": 0.0})
    drained = recorder.drain()
    assert [(w.variant, w.version, w.requests, w.outcomes) for w in drained] == \
        [("candidate", "2", 0, {"correct": [1.0, 0.0]})]
    rolling = RollingWindow()
    rolling.add(drained + drained)
    assert rolling.summary()["candidate"]["outcomes"] == {"correct": {"n": 4, "mean": 0.5}}


@pytest.mark.parametrize(("fields", "root"), [
    ({"feedback_root": "s3://b/fb"}, "s3://b/fb"),
    ({"rollouts_root": "s3://b/rayline/rollouts/"}, "s3://b/rayline/feedback"),   # one storage root for both
    ({"state_dir": "/srv/rayline"}, "/srv/rayline/feedback"),
])
def test_feedback_is_stored_beside_the_rollouts_unless_told_otherwise(fields, root):
    from deployments.serve_config import parse_config

    cfg = parse_config({"model_name": "m", "baseline": "models:/m@champion", **fields})
    assert cfg.feedback_store_root == root
