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
(``enabled: false`` disables it). Unknown keys are ValueErrors naming the dotted key
(``sinks.mqtt.qos_level: unknown key (did you mean 'qos'?) ...``). Sinks are returned in the
order gpio, mqtt, jsonl, console (the time-critical one first). Payloads, topics and timing:
docs/results.md. Only the standard library is imported here: paho-mqtt, Jetson.GPIO and gpiod
are imported when the sink that needs them is created.
"""
from __future__ import annotations

from typing import Any

from .base import Counters, RateLimitedLog, Section, Sink

__all__ = ["SINK_TYPES", "Sink", "Counters", "RateLimitedLog", "Section", "make_sinks", "parse_sinks_config"]

SINK_TYPES = ("gpio", "mqtt", "jsonl", "console")  # creation (and publish) order


def _section(value: Any, key: str) -> dict | None:
    """None when disabled, else the mapping without ``enabled``."""
    if value is None or value is False:
        return None
    if value is True:
        return {}
    if not isinstance(value, dict):
        raise ValueError(f"{key}: must be a mapping (or true/false), got {type(value).__name__} {value!r}")
    enabled = value.get("enabled", True)
    if not isinstance(enabled, bool):
        raise ValueError(f"{key}.enabled: must be true or false, got {enabled!r}")
    if not enabled:
        return None
    return {k: v for k, v in value.items() if k != "enabled"}


def parse_sinks_config(cfg: dict | None, device_id: str) -> dict[str, Any]:
    """Check every section without opening anything (the MQTT password file is read).
    Returns {sink type: typed config} for the enabled sinks. ValueError names the key."""
    from .files import parse_console_config, parse_jsonl_config
    from .gpio import parse_gpio_config
    from .mqtt import parse_mqtt_config

    if cfg is None:
        cfg = {}
    if not isinstance(cfg, dict):
        raise ValueError(f"sinks: must be a mapping, got {type(cfg).__name__}")
    if not isinstance(device_id, str) or not device_id:
        raise ValueError(f"device_id: must be a non-empty string, got {device_id!r}")
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
