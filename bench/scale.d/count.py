"""Counts the values that arrive at a subscriber for bench/scale: reads `mosquitto_sub -v`
lines (topic, space, payload) from stdin and, at start and on every SIGUSR1, writes FILE with
"agent_values agent_messages collectd_values collectd_messages agent_errors" (the counts so
far; agent_errors: the sensors reported in telemetry "errors").

The arrival time of the first agent telemetry message (Unix seconds) goes to FILE.first.
An agent telemetry message counts its "values" keys (each part of a split pass counts its own);
a collectd message (topic under collectd/) is one value. Anything else (status, health, alerts)
is not counted.

    mosquitto_sub -v -t 'devices/+/telemetry' -t 'collectd/#' ... | count.py FILE
"""

import json
import os
import signal
import sys
import time

FILE = sys.argv[1]
agent_values = agent_messages = collectd_values = collectd_messages = agent_errors = 0


def write(*_):
    global agent_values, agent_messages, collectd_values, collectd_messages, agent_errors
    with open(FILE + ".tmp", "w") as out:
        out.write(f"{agent_values} {agent_messages} {collectd_values} {collectd_messages} {agent_errors}\n")
    # A reader never sees a half-written line.
    os.replace(FILE + ".tmp", FILE)


signal.signal(signal.SIGUSR1, write)
write()
for line in sys.stdin:
    topic, _, payload = line.partition(" ")
    if topic.startswith("collectd/"):
        collectd_values += 1
        collectd_messages += 1
    elif topic.endswith("/telemetry"):
        if agent_messages == 0:
            with open(FILE + ".first", "w") as out:
                out.write(f"{time.time():.6f}\n")
        message = json.loads(payload)
        agent_values += len(message.get("values", {}))
        agent_errors += len(message.get("errors", {}))
        agent_messages += 1
