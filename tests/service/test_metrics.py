"""``/metrics`` of a real daemon (in this process, real broker, models, camera and HTTP):
the process figures, config changes counted by source and outcome where the reloader
knows it, and the MQTT reconnects the link counts."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Callable
from pathlib import Path

import aiohttp
import numpy as np
from prometheus_client.parser import text_string_to_metric_families

from edged.config import load_settings
from edged.contracts.publisher import PublisherStatus
from edged.service.daemon import Daemon
from tests.mqtt_helpers import MosquittoBroker
from tests.service.test_daemon import write_config, write_video

TOKEN = "metrics-token"
Values = dict[tuple[str, tuple[tuple[str, str], ...]], float]


async def scrape(daemon: Daemon) -> Values:
    assert daemon.health is not None
    async with (
        aiohttp.ClientSession() as http,
        http.get(f"{daemon.health.url}/metrics") as resp,
    ):
        assert resp.status == 200
        text = await resp.text()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for fam in text_string_to_metric_families(text)
        for s in fam.samples
    }


def changes(values: Values, source: str, result: str) -> float:
    return values[("edged_config_changes_total", (("result", result), ("source", source)))]


async def test_a_running_daemon_counts_config_changes_reconnects_and_exports_process_figures(
    tmp_path: Path, mqtt_broker: MosquittoBroker, models_dir: Path
) -> None:
    video = tmp_path / "grey.avi"
    write_video(video, [np.full((360, 480, 3), 90, np.uint8)] * 10)
    config = write_config(
        tmp_path / "edged.toml",
        mqtt_broker,
        tmp_path / "state",
        models_dir,
        cameras=[{"id": "cam", "source": str(video), "fps": 5, "loop": True}],
        mqtt={"remote_config": True, "remote_config_token": TOKEN, "reconnect_min_s": 0.2},
    )
    settings, _ = load_settings(config)
    daemon = Daemon(settings, config)
    run = asyncio.create_task(daemon.run())

    async def until(pred: Callable[[], bool], what: str, timeout: float = 60) -> None:
        deadline = asyncio.get_running_loop().time() + timeout
        while not pred():
            assert not run.done(), f"the daemon ended while waiting for {what}"
            assert asyncio.get_running_loop().time() < deadline, f"timed out: {what}"
            await asyncio.sleep(0.05)

    def link() -> PublisherStatus:
        status = daemon.snapshot().mqtt
        assert status is not None
        return status

    try:
        await until(lambda: daemon.started, "READY")
        values = await scrape(daemon)
        assert values[("process_resident_memory_bytes", ())] > 50 * 2**20  # models loaded
        assert values[("process_open_fds", ())] > 0
        assert values[("process_start_time_seconds", ())] > 0
        assert all(
            changes(values, source, result) == 0
            for source in ("mqtt", "sighup")
            for result in ("applied", "refused")
        )
        assert values[("edged_mqtt_reconnects_total", ())] == 0
        assert values[("edged_mqtt_events_rejected_total", ())] == 0

        # config/set: one applied, two refused (a wrong token, an invalid value).
        await daemon.remote_config(
            json.dumps({"token": TOKEN, "smoothing": {"alpha": 0.4}}).encode()
        )
        assert daemon.settings.smoothing.alpha == 0.4
        await daemon.remote_config(
            json.dumps({"token": "wrong", "smoothing": {"alpha": 0.3}}).encode()
        )
        await daemon.remote_config(json.dumps({"token": TOKEN, "smoothing": {"alpha": 7}}).encode())
        assert daemon.settings.smoothing.alpha == 0.4
        # SIGHUP: a changed file applied, an invalid one refused.
        good = config.read_text(encoding="utf-8")
        config.write_text(good.replace("alpha = 0.5", "alpha = 0.6"), encoding="utf-8")
        await daemon.reload_from_file()
        assert daemon.settings.smoothing.alpha == 0.6
        config.write_text(good + "\nnot toml [\n", encoding="utf-8")
        await daemon.reload_from_file()
        assert daemon.settings.smoothing.alpha == 0.6

        values = await scrape(daemon)
        assert changes(values, "mqtt", "applied") == 1
        assert changes(values, "mqtt", "refused") == 2
        assert changes(values, "sighup", "applied") == 1
        assert changes(values, "sighup", "refused") == 1

        # The broker restarts: the link's reconnect shows up as the counter.
        mqtt_broker.stop()
        await until(lambda: not link().connected, "the disconnect", 30)
        mqtt_broker.start()
        await until(lambda: link().connected and link().reconnects >= 1, "the reconnect")
        values = await scrape(daemon)
        assert values[("edged_mqtt_reconnects_total", ())] == link().reconnects >= 1
        assert values[("edged_mqtt_connected", ())] == 1
    finally:
        daemon.request_stop()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(run, 30)
    assert run.result() == 0
