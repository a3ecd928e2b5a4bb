// The MQTT.js (Node) client bench/run measures beside fieldagent: the same work as reference.py
// (Last Will, mutual TLS, clean: false, the same files every second, telemetry QoS 0, alert QoS 1).
//
//   node reference.js CONFIG.json     (written by bench/run)
"use strict";
const fs = require("fs");
const os = require("os");
const mqtt = require("mqtt");

const cfg = JSON.parse(fs.readFileSync(process.argv[2], "utf8"));
const prefix = `devices/${cfg.id}`;
const client = mqtt.connect(`mqtts://${cfg.host}:${cfg.port}`, {
  clientId: cfg.id,
  clean: false,
  keepalive: 60,
  ca: fs.readFileSync(cfg.ca),
  cert: fs.readFileSync(cfg.cert),
  key: fs.readFileSync(cfg.key),
  rejectUnauthorized: true,
  will: { topic: `${prefix}/status`, payload: JSON.stringify({ online: false, ts: 0, reason: "lost" }), qos: 1, retain: true },
});

function cpuTimes() {
  const fields = fs.readFileSync("/proc/stat", "utf8").split("\n")[0].split(/\s+/).slice(1).map(Number);
  return [fields.reduce((a, b) => a + b, 0), fields[3] + fields[4]];
}

let seq = 0;
let raised = false;
let [lastTotal, lastIdle] = cpuTimes();
client.on("connect", () => {
  client.publish(`${prefix}/status`, JSON.stringify({ online: true, ts: Date.now() }), { qos: 1, retain: true });
});
function sample() {
  const values = {};
  for (const [name, path, scale] of cfg.files) {
    try {
      values[name] = parseFloat(fs.readFileSync(path, "utf8").split(/\s+/)[0]) * scale;
    } catch (err) {
      // a failing file is left out, as in reference.py
    }
  }
  const [total, idle] = cpuTimes();
  values.cpu_percent = Math.round(10000 * (1 - (idle - lastIdle) / Math.max(total - lastTotal, 1))) / 100;
  [lastTotal, lastIdle] = [total, idle];
  const mem = fs.readFileSync("/proc/meminfo", "utf8");
  const field = (k) => Number(new RegExp(`^${k}:\\s+(\\d+)`, "m").exec(mem)[1]);
  values.mem_used_percent = Math.round(10000 * (1 - field("MemAvailable") / field("MemTotal"))) / 100;
  values.load1 = os.loadavg()[0];
  values.uptime_s = parseFloat(fs.readFileSync("/proc/uptime", "utf8").split(" ")[0]);
  const ts = Date.now();
  client.publish(`${prefix}/telemetry`, JSON.stringify({ ts, seq, values }), { qos: 0 });
  seq += 1;
  const hot = (values[cfg.alert_sensor] || 0) > cfg.alert_above;
  if (hot !== raised) {
    raised = hot;
    client.publish(`${prefix}/alerts`, JSON.stringify({ ts, alert: "overtemp", state: hot ? "raised" : "cleared" }), { qos: 1 });
  }
}
sample();
setInterval(sample, 1000);
