"""The run fields a search may pick (``RUN_FIELDS``, listed by hand in their order) are RunFields' keys."""

from runstream.api.schemas import RUN_FIELDS, Run, RunFields

IDENTITY = {"team", "project", "id"}


def test_run_fields_are_the_declared_ones():
    assert len(set(RUN_FIELDS)) == len(RUN_FIELDS)
    assert set(RUN_FIELDS) == RunFields.__annotations__.keys() - IDENTITY
    assert Run.__annotations__.keys() == RunFields.__annotations__.keys()


def test_required_fields():
    assert RunFields.__required_keys__ == IDENTITY
    assert Run.__required_keys__ == IDENTITY | {"name", "state", "config", "summary", "tags", "created_at"}
