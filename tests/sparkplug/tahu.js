// The other side of fieldagent's Sparkplug B tests: Eclipse Tahu's reference payload codec
// (the npm package sparkplug-payload), so our payloads are checked by an implementation that is
// not ours.
//
//   node tahu.js decode   stdin: lines "<topic> <payload as hex>" (mosquitto_sub -F '%t %x');
//                         stdout: one JSON object per line, {"topic":…,"payload":{…}} in Tahu's
//                         decoded form (64-bit integers as numbers).
//   node tahu.js encode   stdin: a payload object in Tahu's form ({"timestamp":…,"metrics":[…]});
//                         stdout: the encoded bytes.
"use strict";
const Long = require("long");
const sparkplug = require("sparkplug-payload").get("spBv1.0");

function plain(_key, value) {
  if (Long.isLong(value)) {
    return value.toNumber();
  }
  if (value instanceof Uint8Array) {
    return Buffer.from(value).toString("hex");
  }
  return value;
}

function readStdin() {
  return require("fs").readFileSync(0);
}

const mode = process.argv[2];
if (mode === "decode") {
  const out = [];
  for (const line of readStdin().toString("utf8").split("\n")) {
    if (line.trim() === "") {
      continue;
    }
    const space = line.lastIndexOf(" ");
    const topic = line.slice(0, space);
    const bytes = Buffer.from(line.slice(space + 1), "hex");
    let payload;
    try {
      payload = sparkplug.decodePayload(bytes);
    } catch (err) {
      payload = { error: String(err) };
    }
    out.push(JSON.stringify({ topic, payload }, plain));
  }
  process.stdout.write(out.join("\n") + "\n");
} else if (mode === "encode") {
  const object = JSON.parse(readStdin().toString("utf8"));
  process.stdout.write(Buffer.from(sparkplug.encodePayload(object)));
} else {
  process.stderr.write("usage: node tahu.js decode|encode\n");
  process.exit(2);
}
