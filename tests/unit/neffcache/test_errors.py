"""neffcache/errors.py: every error class carries its own code, HTTP status and exit code, and the
tables are derived from them (a class that forgot one would otherwise answer 500 / exit 6)."""

from __future__ import annotations

import pytest

from neffcache import errors
from neffcache.errors import all_error_classes

CLASSES = all_error_classes()


@pytest.mark.parametrize("cls", CLASSES, ids=lambda c: c.__name__)
def test_each_class_states_its_code_status_and_exit_code(cls: type[errors.NeffcacheError]) -> None:
    own = vars(cls)
    assert {"code", "http_status", "exit_code"} <= set(own), f"{cls.__name__} inherits one of them"
    assert isinstance(cls.code, str) and cls.code == cls.code.lower()
    assert 400 <= cls.http_status < 600
    assert cls.exit_code in (errors.EXIT_COMPILE_FAILED, errors.EXIT_USAGE, errors.EXIT_TIMEOUT, errors.EXIT_MISS,
                             errors.EXIT_INTEGRITY, errors.EXIT_UNAVAILABLE)


def test_codes_are_unique() -> None:
    codes = [cls.code for cls in CLASSES]
    assert len(codes) == len(set(codes))


def test_tables_are_derived_from_the_classes() -> None:
    for cls in CLASSES:
        assert errors.HTTP_STATUS[cls.code] == cls.http_status
        assert errors.EXIT_CODE[cls.code] == cls.exit_code
        assert errors.http_status(cls.code) == cls.http_status
        assert errors.exit_code(cls.code) == cls.exit_code


@pytest.mark.parametrize("cls", CLASSES, ids=lambda c: c.__name__)
def test_body_round_trip(cls: type[errors.NeffcacheError]) -> None:
    err = cls("spec.target: no such target", field="target")
    back = errors.from_body(err.to_body(), err.http_status)
    assert type(back) is cls
    assert (back.code, back.detail, back.extra) == (cls.code, "spec.target: no such target", {"field": "target"})


@pytest.mark.parametrize(("status", "exit_code"), [(409, errors.EXIT_USAGE), (503, errors.EXIT_UNAVAILABLE)])
def test_an_unknown_code_is_kept_and_exits_by_its_status(status: int, exit_code: int) -> None:
    err = errors.from_body({"error": "from_a_newer_service", "detail": "something new"}, status)
    assert (err.code, err.detail, err.http_status, err.exit_code) == ("from_a_newer_service", "something new",
                                                                       status, exit_code)


def test_one_invalid_neff() -> None:
    from neffcache import neff

    assert not hasattr(neff, "InvalidNeff") or neff.InvalidNeff is errors.InvalidNeff
    assert sum(cls.__name__ == "InvalidNeff" for cls in CLASSES) == 1
