#!/usr/bin/python3
"""The common reference approach bench/run measures beside fieldagent: the Python paho-mqtt client
(Debian's python3-paho-mqtt) with a Last Will, mutual TLS and clean_session=False, reading the same
files every second, publishing telemetry at QoS 0 and an alert at QoS 1 when a threshold is crossed.

    reference.py CONFIG.json     (written by bench/run)
"""
import json
import os
import ssl
import sys
import time

import paho.mqtt.client as mqtt

cfg = json.load(open(sys.argv[1]))
prefix = "devices/" + cfg["id"]
client = mqtt.Client(client_id=cfg["id"], clean_session=False)
client.tls_set(ca_certs=cfg["ca"], certfile=cfg["cert"], keyfile=cfg["key"],
               tls_version=ssl.PROTOCOL_TLS_CLIENT)
client.will_set(prefix + "/status", json.dumps({"online": False, "ts": 0, "reason": "lost"}),
                qos=1, retain=True)
client.connect(cfg["host"], cfg["port"], keepalive=60)
client.loop_start()
client.publish(prefix + "/status", json.dumps({"online": True, "ts": int(time.time() * 1000)}),
               qos=1, retain=True)


def cpu_times():
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    return sum(fields), fields[3] + fields[4]


seq = 0
raised = False
last_total, last_idle = cpu_times()
next_at = time.monotonic()
while True:
    values = {}
    for name, path, scale in cfg["files"]:
        try:
            with open(path) as f:
                values[name] = float(f.read().split()[0]) * scale
        except (OSError, ValueError, IndexError):
            pass
    total, idle = cpu_times()
    values["cpu_percent"] = round(100.0 * (1 - (idle - last_idle) / max(total - last_total, 1)), 2)
    last_total, last_idle = total, idle
    meminfo = {}
    with open("/proc/meminfo") as f:
        for line in f:
            key, rest = line.split(":", 1)
            meminfo[key] = int(rest.split()[0])
    values["mem_used_percent"] = round(100.0 * (1 - meminfo["MemAvailable"] / meminfo["MemTotal"]), 2)
    values["load1"] = os.getloadavg()[0]
    with open("/proc/uptime") as f:
        values["uptime_s"] = float(f.read().split()[0])
    ts = int(time.time() * 1000)
    client.publish(prefix + "/telemetry", json.dumps({"ts": ts, "seq": seq, "values": values}), qos=0)
    seq += 1
    hot = values.get(cfg["alert_sensor"], 0) > cfg["alert_above"]
    if hot != raised:
        raised = hot
        client.publish(prefix + "/alerts", json.dumps({"ts": ts, "alert": "overtemp",
                       "state": "raised" if hot else "cleared"}), qos=1)
    next_at += 1.0
    time.sleep(max(0.0, next_at - time.monotonic()))
