"""/health and /metrics over real HTTP against the server bound to an ephemeral port."""

from __future__ import annotations

import copy
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from edged.config import HealthSettings
from edged.errors import EdgedError
from edged.service.health import HealthServer, Metrics, evaluate_health


def healthy() -> dict[str, Any]:
    cam = {
        "state": "running",
        "last_frame_age_s": 0.05,
        "fps_in": 25.0,
        "fps_processed": 5.0,
        "faces": 1,
        "frames_in": 1000,
        "frames_processed": 200,
        "dropped_frames": 800,
        "reconnects": 0,
        "last_error": None,
    }
    return {
        "version": "0.1.0",
        "phase": "sota_phase2",
        "uptime_s": 42.0,
        "models": {"scrfd_10g": "cpu", "enet_b2_7": "cpu"},
        "cameras": {"door": dict(cam), "hall": {**cam, "faces": 2, "frames_in": 7}},
        "mqtt": {
            "connected": True,
            "events_published": 17,
            "events_rejected": 2,
            "reconnects": 5,
            "spool_expired": 4,
        },
        "spool": {"pending": 3, "dropped": 1},
    }


class State:
    """The daemon's side: a snapshot the test mutates between requests."""

    def __init__(self) -> None:
        self.snap = healthy()

    def __call__(self) -> dict[str, Any]:
        return copy.deepcopy(self.snap)


@pytest.fixture
async def served() -> AsyncIterator[tuple[State, HealthServer, aiohttp.ClientSession]]:
    state = State()
    server = HealthServer(HealthSettings(port=0, stale_after_s=5.0), state, Metrics())
    await server.start()
    async with aiohttp.ClientSession(base_url=server.url) as session:
        yield state, server, session
    await server.stop()


async def get_health(session: aiohttp.ClientSession) -> tuple[int, dict[str, Any]]:
    async with session.get("/health") as resp:
        assert resp.content_type == "application/json"
        return resp.status, await resp.json()


async def test_all_cameras_fresh_and_mqtt_connected_is_ok(served: Any) -> None:
    _, server, session = served
    assert server.port > 0
    status, body = await get_health(session)
    assert status == 200
    assert body["status"] == "ok" and body["reasons"] == []
    assert body["models"] == {"scrfd_10g": "cpu", "enet_b2_7": "cpu"}
    assert body["cameras"]["door"]["producing"] is True
    assert body["uptime_s"] == 42.0


async def test_one_camera_down_or_mqtt_disconnected_is_degraded(served: Any) -> None:
    state, _, session = served
    state.snap["cameras"]["hall"].update(state="reconnecting", last_error="no such file")
    status, body = await get_health(session)
    assert (status, body["status"]) == (200, "degraded")
    assert body["reasons"] == ["camera hall: reconnecting (no such file)"]
    assert body["cameras"]["hall"]["producing"] is False

    state.snap = healthy()
    state.snap["mqtt"]["connected"] = False
    status, body = await get_health(session)
    assert (status, body["status"], body["reasons"]) == (200, "degraded", ["mqtt disconnected"])


async def test_no_model_loaded_is_failing_with_503(served: Any) -> None:
    state, _, session = served
    state.snap["models"] = {}
    status, body = await get_health(session)
    assert status == 503
    assert body["status"] == "failing"
    assert body["reasons"] == ["no model loaded"]


async def test_every_camera_stale_or_down_is_failing_with_503(served: Any) -> None:
    state, _, session = served
    state.snap["cameras"]["door"]["last_frame_age_s"] = 6.0  # > stale_after_s = 5
    state.snap["cameras"]["hall"]["state"] = "finished"
    status, body = await get_health(session)
    assert status == 503
    assert body["status"] == "failing"
    assert body["reasons"] == [
        "no camera producing frames: camera door: last frame 6.0s ago; camera hall: finished"
    ]
    # One recovers: degraded, not failing.
    state.snap["cameras"]["door"]["last_frame_age_s"] = 0.1
    status, body = await get_health(session)
    assert (status, body["status"]) == (200, "degraded")


async def test_failing_snapshot_answers_503_instead_of_crashing() -> None:
    def broken() -> dict[str, Any]:
        raise RuntimeError("pipeline state torn down")

    server = HealthServer(HealthSettings(port=0), broken, Metrics())
    await server.start()
    try:
        async with aiohttp.ClientSession(base_url=server.url) as session:
            status, body = await get_health(session)
            assert status == 503
            assert body["reasons"] == ["snapshot failed: pipeline state torn down"]
            async with session.get("/metrics") as resp:
                assert resp.status == 200  # the histogram is still there
    finally:
        await server.stop()


def test_no_cameras_configured_is_not_a_failure() -> None:
    snap = healthy()
    snap["cameras"] = {}
    assert evaluate_health(snap, 5.0).status == "ok"


async def test_metrics_parse_as_prometheus_text_with_labelled_families(served: Any) -> None:
    _, server, session = served
    server.metrics.observe_inference("scrfd_10g", "detect", 0.012)
    server.metrics.observe_inference("scrfd_10g", "detect", 0.020)
    server.metrics.observe_inference("enet_b2_7", "classify", 0.004)
    async with session.get("/metrics") as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"].startswith("text/plain")
        text = await resp.text()
    samples: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    families = {}
    for fam in text_string_to_metric_families(text):
        families[fam.name] = fam.type
        for s in fam.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value

    def value(name: str, **labels: str) -> float:
        return samples[(name, tuple(sorted(labels.items())))]

    assert families["edged_frames_in"] == "counter"
    assert families["edged_inference_seconds"] == "histogram"
    assert families["edged_faces"] == "gauge"
    assert value("edged_frames_in_total", camera="door") == 1000
    assert value("edged_frames_in_total", camera="hall") == 7
    assert value("edged_frames_processed_total", camera="door") == 200
    assert value("edged_frames_dropped_total", camera="door") == 800
    assert value("edged_faces", camera="hall") == 2
    assert value("edged_camera_up", camera="door") == 1
    assert value("edged_events_published_total") == 17
    assert value("edged_spool_pending") == 3
    assert value("edged_spool_dropped_total") == 1
    assert value("edged_mqtt_connected") == 1
    assert value("edged_info", version="0.1.0", phase="sota_phase2") == 1
    assert value("edged_model_info", model="enet_b2_7", provider="cpu") == 1
    assert value("edged_inference_seconds_count", model="scrfd_10g", stage="detect") == 2
    assert value("edged_inference_seconds_sum", model="scrfd_10g", stage="detect") == (
        pytest.approx(0.032)
    )
    assert (
        value("edged_inference_seconds_bucket", model="enet_b2_7", stage="classify", le="0.005")
        == 1
    )
    assert (
        value("edged_inference_seconds_bucket", model="scrfd_10g", stage="detect", le="0.01") == 0
    )


def scrape_values(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of a Prometheus text page: (name, sorted labels) → value."""
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for fam in text_string_to_metric_families(text)
        for s in fam.samples
    }


async def test_mqtt_reconnects_rejected_events_and_spool_expiry_are_counters_of_the_snapshot(
    served: Any,
) -> None:
    state, _, session = served
    async with session.get("/metrics") as resp:
        text = await resp.text()
    types = {fam.name: fam.type for fam in text_string_to_metric_families(text)}
    values = scrape_values(text)
    for family, value in (
        ("edged_mqtt_reconnects", 5),
        ("edged_mqtt_events_rejected", 2),
        ("edged_spool_expired", 4),
    ):
        assert types[family] == "counter", family
        assert values[(f"{family}_total", ())] == value, family
    # They follow the publisher's figures, and a snapshot without them reads as zero.
    state.snap["mqtt"].update(reconnects=6)
    del state.snap["mqtt"]["events_rejected"]
    async with session.get("/metrics") as resp:
        values = scrape_values(await resp.text())
    assert values[("edged_mqtt_reconnects_total", ())] == 6
    assert values[("edged_mqtt_events_rejected_total", ())] == 0


async def test_metrics_carry_the_process_and_platform_collectors_on_the_private_registry(
    served: Any,
) -> None:
    import time

    _, _, session = served
    async with session.get("/metrics") as resp:
        values = scrape_values(await resp.text())
    rss = values[("process_resident_memory_bytes", ())]
    assert rss > 10 * 2**20  # this test process: python, numpy, aiohttp loaded
    assert values[("process_cpu_seconds_total", ())] > 0
    assert 3 <= values[("process_open_fds", ())] <= values[("process_max_fds", ())]
    started = values[("process_start_time_seconds", ())]
    assert time.time() - 24 * 3600 < started <= time.time()
    info = [labels for name, labels in values if name == "python_info"]
    assert info and dict(info[0])["implementation"] == "CPython"


async def test_config_changes_start_at_zero_for_every_source_and_result_and_count_each(
    served: Any,
) -> None:
    _, server, session = served
    server.metrics.config_change("mqtt", "refused")
    server.metrics.config_change("mqtt", "refused")
    server.metrics.config_change("sighup", "applied")
    async with session.get("/metrics") as resp:
        text = await resp.text()
    types = {fam.name: fam.type for fam in text_string_to_metric_families(text)}
    assert types["edged_config_changes"] == "counter"
    values = scrape_values(text)

    def changes(source: str, result: str) -> float:
        return values[("edged_config_changes_total", (("result", result), ("source", source)))]

    assert changes("mqtt", "refused") == 2
    assert changes("sighup", "applied") == 1
    assert changes("mqtt", "applied") == 0 and changes("sighup", "refused") == 0


async def test_metrics_follow_the_snapshot_at_every_scrape(served: Any) -> None:
    state, _, session = served
    state.snap["cameras"]["door"].update(frames_in=1500, state="reconnecting")
    state.snap["mqtt"]["connected"] = False
    async with session.get("/metrics") as resp:
        text = await resp.text()
    assert 'edged_frames_in_total{camera="door"} 1500.0' in text
    assert 'edged_camera_up{camera="door"} 0.0' in text
    assert "edged_mqtt_connected 0.0" in text


async def test_two_metrics_registries_do_not_collide() -> None:
    a, b = Metrics(), Metrics()
    a.observe_inference("m", "detect", 0.1)
    assert b"edged_inference_seconds_count" not in b.render()
    assert b'edged_inference_seconds_count{model="m",stage="detect"} 1.0' in a.render()


async def test_port_in_use_raises_an_error_naming_it(served: Any) -> None:
    _, server, _ = served
    clash = HealthServer(HealthSettings(port=server.port), dict, Metrics())
    with pytest.raises(EdgedError, match=f"127.0.0.1:{server.port}"):
        await clash.start()
