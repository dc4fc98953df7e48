'use strict';
// Telemetry throughput of the official Azure IoT Node SDK (MQTT transport)
// for `make bench` (scripts/bench.d/telemetry.sh). Run with
// `node --require ./shim.js bench_send.js CONFIG.json`; CONFIG has
//   hub, deviceId, certFile, keyFile: the device and its hub;
//   bodies: a file with one message body per line;
//   window: how many sendEvent calls wait for their PUBACK at once.
// The MQTT transport has no sendEventBatch (it throws NotImplementedError),
// so concurrent sendEvent calls are its fastest way. Prints one JSON line:
//   {"sent":N,"ms":T} (T from the first sendEvent to the last PUBACK).
const fs = require('fs');
const crypto = require('crypto');
const { Client, Message } = require('azure-iot-device');
const { Mqtt } = require('azure-iot-device-mqtt');

const cfg = JSON.parse(fs.readFileSync(process.argv[2], 'utf8'));
const bodies = fs.readFileSync(cfg.bodies, 'utf8').split('\n').filter((l) => l.length > 0);
const window = cfg.window || 1000;

function cb2p(fn) {
  return new Promise((resolve, reject) => fn((err, res) => (err ? reject(err) : resolve(res))));
}

async function main() {
  const client = Client.fromConnectionString(`HostName=${cfg.hub};DeviceId=${cfg.deviceId};x509=true`, Mqtt);
  client.setOptions({ cert: fs.readFileSync(cfg.certFile, 'utf8'), key: fs.readFileSync(cfg.keyFile, 'utf8') });
  await cb2p((cb) => client.open(cb));
  const msgs = bodies.map((b) => {
    const m = new Message(b);
    m.contentType = 'application/json';
    m.contentEncoding = 'utf-8';
    m.messageId = crypto.randomUUID();
    return m;
  });
  let next = 0;
  let sent = 0;
  const t0 = process.hrtime.bigint();
  async function worker() {
    while (next < msgs.length) {
      const m = msgs[next++];
      await cb2p((cb) => client.sendEvent(m, cb));
      sent++;
    }
  }
  await Promise.all(Array.from({ length: Math.min(window, msgs.length) }, worker));
  const ms = Number(process.hrtime.bigint() - t0) / 1e6;
  process.stdout.write(JSON.stringify({ sent, ms }) + '\n');
  await cb2p((cb) => client.close(cb));
}

main().catch((err) => {
  process.stderr.write(`bench_send: ${err && err.stack ? err.stack : err}\n`);
  process.exit(1);
});
