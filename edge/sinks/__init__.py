"""Result sinks: where every InspectionResult goes (MQTT, a GPIO reject pulse, a JSONL log, the
console). The daemon builds them once with :func:`make_sinks` and calls, from its sink thread,
``publish(result, heatmap_jpeg)``, ``publish_status(status)``, and at shutdown ``close(timeout_s)``.

```python
from edge.sinks import make_sinks
sinks = make_sinks({"mqtt": {"host": "broker.lan"}, "gpio": {"backend": "gpiod", "line": 17,
                    "delay_ms": 350, "pulse_ms": 80}, "jsonl": {"path": "/var/log/rgbd-edge/results.jsonl"},
                    "console": {"enabled": True, "only_rejects": True}}, device_id="line3-cam1")
```

Each section may be absent/None/false (disabled), ``true`` or ``{}`` (defaults), or a mapping
(``enabled: false`` disables it). Configuration mistakes (unknown keys too) raise
edge.checks.CheckError, a ValueError naming the dotted key in its message and in ``key``
(``sinks.console.only_reject: unknown key (did you mean 'only_rejects'?) ...``). Sinks are
returned in the order gpio, mqtt, jsonl, console (the time-critical one first). Every numeric
key has an upper bound that its error names. The gpio, mqtt and jsonl sinks also offer
``drain_events()`` and ``stats()["health_problems"]`` (edge/sinks/base.py). Payloads, topics,
timing, events and health: docs/results.md. Only the standard library and yaml are imported here: paho-mqtt,
Jetson.GPIO and gpiod are imported when the sink that needs them is created.
"""
from __future__ import annotations

from typing import Any

from ..checks import Checker, Section, describe
from .base import Counters, RateLimitedLog, Sink

__all__ = ["SINK_TYPES", "Sink", "Counters", "RateLimitedLog", "Section", "make_sinks", "parse_sinks_config"]

SINK_TYPES = ("gpio", "mqtt", "jsonl", "console")  # creation (and publish) order


_CHECK = Checker()  # errors name the whole dotted key: sinks.mqtt.qos


def _section(value: Any, key: str) -> dict | None:
    """None when disabled, else the mapping without ``enabled``."""
    if value is None or value is False:
        return None
    if value is True:
        return {}
    if not isinstance(value, dict):
        raise _CHECK.fail(key, f"must be a mapping (or true/false), got {describe(value)}")
    if not _CHECK.boolean(value.get("enabled", True), f"{key}.enabled"):
        return None
    return {k: v for k, v in value.items() if k != "enabled"}


def parse_sinks_config(cfg: dict | None, device_id: str) -> dict[str, Any]:
    """Check every section without opening anything (the MQTT password file is read).
    Returns {sink type: typed config} for the enabled sinks. A CheckError (a ValueError) names
    the dotted key."""
    from .files import parse_console_config, parse_jsonl_config
    from .gpio import parse_gpio_config
    from .mqtt import parse_mqtt_config

    cfg = _CHECK.mapping(cfg, "sinks", allow_none=True, any_keys=True)
    _CHECK.string(device_id, "device_id")
    Section(cfg, "sinks", SINK_TYPES)  # unknown sink types
    parsers = {"gpio": parse_gpio_config, "mqtt": lambda d, k: parse_mqtt_config(d, device_id, k),
               "jsonl": parse_jsonl_config, "console": parse_console_config}
    out = {}
    for name in SINK_TYPES:
        d = _section(cfg.get(name), f"sinks.{name}")
        if d is not None:
            out[name] = parsers[name](d, f"sinks.{name}")
    return out


def make_sinks(cfg: dict | None, device_id: str) -> list[Sink]:
    """Build the configured sinks (all configuration is checked before any is started). If one
    fails to start, those already started are closed and the error propagates: ValueError for
    configuration problems, ImportError for a missing optional library, OSError/RuntimeError for
    hardware or files that cannot be opened."""
    parsed = parse_sinks_config(cfg, device_id)
    sinks: list = []
    try:
        for name, c in parsed.items():
            if name == "gpio":
                from .gpio import GpioSink
                sinks.append(GpioSink(c))
            elif name == "mqtt":
                from .mqtt import MqttSink
                sinks.append(MqttSink(c, device_id))
            elif name == "jsonl":
                from .files import JsonlSink
                sinks.append(JsonlSink(c))
            elif name == "console":
                from .files import ConsoleSink
                sinks.append(ConsoleSink(c))
    except BaseException:
        for s in sinks:
            try:
                s.close(1.0)
            except Exception:
                pass
        raise
    return sinks
