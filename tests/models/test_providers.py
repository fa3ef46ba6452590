"""The one place that decides ONNX Runtime threads: default_threads and SessionFactory."""

from __future__ import annotations

from pathlib import Path

import pytest

from edged.models.catalog import CATALOG
from edged.models.providers import MAX_DEFAULT_THREADS, SessionFactory, default_threads


@pytest.mark.parametrize(
    ("cores", "expected"),
    [(None, 1), (0, 1), (1, 1), (2, 1), (3, 2), (4, 3), (5, 4), (8, 4), (64, 4)],
)
@pytest.mark.parametrize("kind", ["detector", "emotion"])
def test_default_threads_leave_a_core_to_capture_and_cap_at_four(
    cores: int | None, expected: int, kind: str
) -> None:
    assert default_threads(cores, kind) == expected  # type: ignore[arg-type]
    assert 1 <= default_threads(cores, kind) <= MAX_DEFAULT_THREADS  # type: ignore[arg-type]


def test_an_explicit_thread_count_overrides_the_machines_choice() -> None:
    assert (
        SessionFactory(providers=["cpu"], intra_op_threads=3, cpu_count=2).threads("detector") == 3
    )
    assert SessionFactory(providers=["cpu"], cpu_count=8).threads("emotion") == 4
    assert SessionFactory(providers=["cpu"], cpu_count=2).threads("detector") == 1


@pytest.mark.parametrize(("configured", "cores", "expected"), [(0, 6, 4), (0, 2, 1), (2, 2, 2)])
def test_sessions_are_built_with_the_resolved_threads_and_one_inter_op_thread(
    models_dir: Path, configured: int, cores: int, expected: int
) -> None:
    factory = SessionFactory(providers=["cpu"], intra_op_threads=configured, cpu_count=cores)
    session, provider = factory.create(CATALOG["yunet"].paths(models_dir)[0], "detector")
    assert provider == "cpu"
    options = session.get_session_options()
    assert options.intra_op_num_threads == expected
    assert options.inter_op_num_threads == 1
    assert options.get_session_config_entry("session.intra_op.allow_spinning") == "0"
