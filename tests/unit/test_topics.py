"""The replication ``runstream topics create`` chooses, refuses and warns about (pure logic; the cluster test creates)."""

import pytest

from runstream import events
from runstream.streams.topics import Replication, plan_replication, with_partitions


@pytest.mark.parametrize(
    ("brokers", "factor", "min_insync"),
    [(1, 1, 1), (2, 2, 1), (3, 3, 2), (5, 3, 2), (9, 3, 2)],
)
def test_defaults_follow_the_cluster(brokers, factor, min_insync):
    assert plan_replication(brokers) == Replication(factor, min_insync)


@pytest.mark.parametrize(("factor", "min_insync"), [(3, 2), (4, 3), (5, 3), (6, 4)])
def test_the_default_min_isr_is_a_majority_of_the_replicas(factor, min_insync):
    assert plan_replication(9, factor) == Replication(factor, min_insync)


def test_more_replicas_than_brokers_is_refused():
    with pytest.raises(ValueError, match="replication factor 3 needs 3 brokers, and the cluster has 2"):
        plan_replication(2, 3)


def test_min_isr_above_the_replication_factor_is_refused():
    with pytest.raises(ValueError, match=r"min\.insync\.replicas 3 is more than the replication factor 2"):
        plan_replication(3, 2, 3)
    with pytest.raises(ValueError, match=r"min\.insync\.replicas 4 is more than the replication factor 3"):
        plan_replication(3, None, 4)


@pytest.mark.parametrize(("brokers", "factor", "min_insync"), [(3, 0, None), (3, 3, 0), (0, None, None)])
def test_nonsense_is_refused(brokers, factor, min_insync):
    with pytest.raises(ValueError):
        plan_replication(brokers, factor, min_insync)


def test_three_replicas_with_min_isr_one_warn_but_are_allowed():
    plan = plan_replication(3, 3, 1)
    assert (plan.factor, plan.min_insync) == (3, 1)
    (warning,) = plan.warnings
    assert "one copy only" in warning and "--min-insync-replicas 2" in warning


def test_min_isr_equal_to_the_replicas_warns_that_one_broker_down_stops_producing():
    (warning,) = plan_replication(3, 3, 3).warnings
    assert "any one broker" in warning
    assert plan_replication(1).warnings == ()  # one broker: nothing to trade


def test_partitions_change_every_run_keyed_topic_together():
    topics = with_partitions(events.TOPICS, 24)
    by_name = {t.name: t.partitions for t in topics}
    assert by_name[events.TOPIC_DEAD_LETTERS.name] == 1
    assert {by_name[t.name] for t in events.TOPICS if t is not events.TOPIC_DEAD_LETTERS} == {24}
    assert with_partitions(events.TOPICS, None) == list(events.TOPICS)
    with pytest.raises(ValueError, match="at least 1 partition"):
        with_partitions(events.TOPICS, 0)
