"""The watcher's decisions: which versions to audit from successive registry snapshots."""

from tasks.registry.watch import Watcher, moved


def snap(latest: str, stamp: str = "a", **aliases: str) -> dict[str, str]:
    return {"latest": latest, "latest.stamp": stamp} | {f"@{alias}": version for alias, version in aliases.items()}


def test_the_first_poll_is_a_baseline_and_starts_nothing():
    watcher = Watcher()
    assert watcher.observe({"credit": snap("v3"), "churn": snap("v1")}) == []
    assert watcher.observe({"credit": snap("v3"), "churn": snap("v1")}) == []


def test_a_new_version_is_audited_once_after_it_settles():
    watcher = Watcher()
    watcher.observe({"credit": snap("v3")})
    assert watcher.observe({"credit": snap("v4", "partial")}) == []  # still being copied
    assert watcher.observe({"credit": snap("v4", "whole")}) == []  # its files changed again: wait once more
    assert watcher.observe({"credit": snap("v4", "whole")}) == [("credit", "v4")]
    assert watcher.observe({"credit": snap("v4", "whole")}) == []  # exactly once
    assert watcher.observe({"credit": snap("v4", "whole")}) == []


def test_a_version_rewritten_in_place_is_audited_again():
    watcher = Watcher()
    watcher.observe({"credit": snap("v3", "a")})
    watcher.observe({"credit": snap("v3", "b")})
    assert watcher.observe({"credit": snap("v3", "b")}) == [("credit", "v3")]


def test_a_moved_alias_audits_its_new_target_and_two_labels_on_one_version_audit_it_once():
    watcher = Watcher()
    watcher.observe({"credit": snap("7", champion="5")})
    watcher.observe({"credit": snap("7", champion="6")})
    assert watcher.observe({"credit": snap("7", champion="6")}) == [("credit", "@champion")]  # recorded as asked
    watcher.observe({"credit": snap("8", champion="8", challenger="8")})
    assert watcher.observe({"credit": snap("8", champion="8", challenger="8")}) == [("credit", "@champion")]
    watcher.observe({"credit": snap("9", champion="8", challenger="8")})
    assert watcher.observe({"credit": snap("9", champion="8", challenger="8")}) == [("credit", "9")]


def test_a_model_that_appears_later_has_its_newest_version_audited_and_an_unreadable_one_waits():
    watcher = Watcher()
    watcher.observe({"credit": snap("v3")})
    watcher.observe({"credit": snap("v3"), "churn": snap("v1")})
    assert watcher.observe({"churn": snap("v1")}) == [("churn", "v1")]  # credit unreadable this poll: nothing lost
    assert watcher.observe({"credit": snap("v3"), "churn": snap("v1")}) == []


def test_a_change_that_reverts_before_settling_starts_nothing():
    watcher = Watcher()
    watcher.observe({"credit": snap("v3")})
    watcher.observe({"credit": snap("v4")})
    assert watcher.observe({"credit": snap("v3")}) == []
    assert watcher.observe({"credit": snap("v3")}) == []


def test_moved_ignores_stamps_of_labels_that_did_not_move():
    assert moved(snap("v3", "a"), snap("v3", "a")) == []
    assert moved({}, snap("v1")) == ["v1"]
