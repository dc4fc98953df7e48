'use strict';
// Benchmark helper for dps/bench_test.go: registers devices one after the
// other with the official Azure IoT Node.js SDK (unmodified) against
// devid-sim and prints one JSON line per registration with its duration,
// measured like the Go side: from creating the client to "assigned".
//
//   NODE_PATH=simulator/conformance/node/node_modules NODE_EXTRA_CA_CERTS=server-root.pem \
//     node node_register_bench.js CONFIG.json
//
// CONFIG: {"ready": <devid-sim ready line>, "devices": [{"regId", "certFile", "keyFile"}]}
const fs = require('fs');
const { ProvisioningDeviceClient } = require('azure-iot-provisioning-device');
const { Mqtt } = require('azure-iot-provisioning-device-mqtt');
const { X509Security } = require('azure-iot-security-x509');

const cfg = JSON.parse(fs.readFileSync(process.argv[2], 'utf8'));
const dps = cfg.ready.dps;
const port = dps.addr.slice(dps.addr.lastIndexOf(':') + 1);
const host = dps.host === 'localhost' ? `localhost:${port}` : dps.host;

function registerOnce(dev) {
  const cert = fs.readFileSync(dev.certFile, 'utf8');
  const key = fs.readFileSync(dev.keyFile, 'utf8');
  const t0 = process.hrtime.bigint();
  const client = ProvisioningDeviceClient.create(host, cfg.ready.id_scope, new Mqtt(), new X509Security(dev.regId, { cert, key }));
  return new Promise((resolve, reject) => {
    client.register((err, result) => {
      const ms = Number(process.hrtime.bigint() - t0) / 1e6;
      if (err) return reject(err);
      resolve({ ms, hub: result.assignedHub, deviceId: result.deviceId });
    });
  });
}

(async () => {
  for (const dev of cfg.devices) {
    try {
      const r = await registerOnce(dev);
      process.stdout.write(JSON.stringify({ event: 'registered', regId: dev.regId, ms: r.ms, hub: r.hub }) + '\n');
    } catch (err) {
      process.stdout.write(JSON.stringify({ event: 'error', regId: dev.regId, message: String(err && err.message || err) }) + '\n');
      process.exit(1);
    }
  }
  process.stdout.write(JSON.stringify({ event: 'done' }) + '\n');
  process.exit(0);
})();
