'use strict';
// Drives devid-sim with the official Azure IoT Node.js SDK, unmodified.
//
//   node --require ./shim.js flow.js CONFIG.json
//
// CONFIG (written by the Go conformance test):
//   ready       the simulator's ready line (id_scope, dps, hubs)
//   regId       registration ID = leaf CN
//   certFile    PEM: leaf then intermediates; keyFile: PEM private key
//   steps       ["register", "hub"] (default both); "hub" alone needs assignedHub + deviceId
//   transport   "mqtt" (default, TLS on 8883) or "ws" (MQTT over secure WebSocket on 443)
//   payload     optional custom registration payload
//   telemetry   {body, contentType, contentEncoding, messageId, correlationId, properties:{k:v}}
//   reported    reported-properties patch
//   method      {name, status, response}  the answer to give to a direct method
//   await       events to wait for after "hub_ready": any of "method", "c2d", "desired"
//   desiredKey  property name whose arrival in a desired patch ends the "desired" wait
//   timeoutMs   overall bound (default 60000)
//
// Every result is one JSON line on stdout: {"event": ..., ...}. The last line is
// {"event":"done"} on success or {"event":"error","step":...,"message":...}.
const fs = require('fs');

const cfg = JSON.parse(fs.readFileSync(process.argv[2], 'utf8'));
const out = (event, fields) => process.stdout.write(JSON.stringify(Object.assign({ event }, fields || {})) + '\n');

let finished = false;
function fail(step, err) {
  if (finished) return;
  finished = true;
  const e = { step, message: String((err && err.message) || err) };
  if (err && err.name) e.name = err.name;
  if (err && err.transportError) e.transport = String(err.transportError.message || err.transportError);
  if (err && err.result) e.result = err.result;
  out('error', e);
  process.exit(1);
}
const timer = setTimeout(() => fail('timeout', new Error(`no completion within ${cfg.timeoutMs || 60000} ms`)), cfg.timeoutMs || 60000);

const cert = fs.readFileSync(cfg.certFile, 'utf8');
const key = fs.readFileSync(cfg.keyFile, 'utf8');
const steps = cfg.steps || ['register', 'hub'];
const ws = cfg.transport === 'ws';

function register() {
  const ProvisioningDeviceClient = require('azure-iot-provisioning-device').ProvisioningDeviceClient;
  const provTransport = require('azure-iot-provisioning-device-mqtt');
  const ProvMqtt = ws ? provTransport.MqttWs : provTransport.Mqtt;
  const X509Security = require('azure-iot-security-x509').X509Security;
  const dps = cfg.ready.dps;
  const port = dps.addr.slice(dps.addr.lastIndexOf(':') + 1);
  // localhost resolves by itself; any other DPS name is mapped by shim.js on :8883.
  // The WebSocket transport always appends :443, so it needs the shim for every name.
  const provHost = dps.host === 'localhost' && !ws ? `localhost:${port}` : dps.host;
  const security = new X509Security(cfg.regId, { cert, key });
  const client = ProvisioningDeviceClient.create(provHost, cfg.ready.id_scope, new ProvMqtt(), security);
  if (cfg.payload !== undefined) client.setProvisioningPayload(cfg.payload);
  return new Promise((resolve, reject) => {
    client.register((err, result) => {
      if (err) return reject(Object.assign(err, { result }));
      resolve(result);
    });
  });
}

function cb2p(fn) {
  return new Promise((resolve, reject) => fn((err, res) => (err ? reject(err) : resolve(res))));
}

async function hub(assignedHub, deviceId) {
  const { Client, Message } = require('azure-iot-device');
  const deviceTransport = require('azure-iot-device-mqtt');
  const Mqtt = ws ? deviceTransport.MqttWs : deviceTransport.Mqtt;
  const client = Client.fromConnectionString(`HostName=${assignedHub};DeviceId=${deviceId};x509=true`, Mqtt);
  client.setOptions({ cert, key });
  client.on('error', (err) => fail('hub-error', err));

  const pending = new Set(cfg.await || []);
  let resolveAll;
  const allDone = new Promise((r) => { resolveAll = r; });
  const tick = (what) => { pending.delete(what); if (pending.size === 0) resolveAll(); };

  await cb2p((cb) => client.open(cb));
  out('connected', { assignedHub, deviceId });

  // Handlers go on before twin traffic: their SUBSCRIBEs precede the twin GET on the wire,
  // so once the twin answer is here the hub has processed them.
  client.on('message', (msg) => {
    const props = {};
    for (const p of msg.properties.propertyList) props[p.key] = p.value;
    out('c2d', {
      data: msg.data ? msg.data.toString('utf8') : '',
      messageId: msg.messageId, correlationId: msg.correlationId, userId: msg.userId,
      contentType: msg.contentType, contentEncoding: msg.contentEncoding,
      expiryTimeUtc: msg.expiryTimeUtc, to: msg.to, ack: msg.ack, properties: props,
    });
    client.complete(msg, (err) => {
      if (err) return fail('c2d-complete', err);
      tick('c2d');
    });
  });
  if (cfg.method) {
    client.onDeviceMethod(cfg.method.name, (req, res) => {
      out('method', { name: req.methodName, requestId: req.requestId, payload: req.payload });
      res.send(cfg.method.status, cfg.method.response, (err) => {
        if (err) return fail('method-response', err);
        tick('method');
      });
    });
  }

  if (cfg.telemetry) {
    const t = cfg.telemetry;
    const m = new Message(t.body);
    if (t.contentType) m.contentType = t.contentType;
    if (t.contentEncoding) m.contentEncoding = t.contentEncoding;
    if (t.messageId) m.messageId = t.messageId;
    if (t.correlationId) m.correlationId = t.correlationId;
    for (const [k, v] of Object.entries(t.properties || {})) m.properties.add(k, v);
    const r = await cb2p((cb) => client.sendEvent(m, cb));
    out('telemetry_sent', { messageId: t.messageId, result: r && r.constructor && r.constructor.name });
  }

  const twin = await cb2p((cb) => client.getTwin(cb));
  await cb2p((cb) => twin.enableTwinDesiredPropertiesUpdates(cb));
  // A fresh GET after the desired subscription, as the SDK does on reconnect.
  await cb2p((cb) => twin.get(cb));
  out('twin', { desired: twin.properties.desired, reported: twin.properties.reported });
  const desiredBase = twin.properties.desired.$version;
  twin.on('properties.desired', (delta) => {
    if (!cfg.desiredKey || delta.$version === desiredBase) return;
    if (Object.prototype.hasOwnProperty.call(delta, cfg.desiredKey)) {
      out('desired', { patch: delta });
      tick('desired');
    }
  });

  if (cfg.reported) {
    await cb2p((cb) => twin.properties.reported.update(cfg.reported, cb));
    out('reported_patched', { version: twin.properties.reported.$version });
  }

  out('hub_ready', { awaiting: [...pending] });
  if (pending.size > 0) await allDone;
  await cb2p((cb) => client.close(cb));
  out('closed');
}

(async () => {
  let assignedHub = cfg.assignedHub;
  let deviceId = cfg.deviceId;
  let step = 'register';
  try {
    if (steps.includes('register')) {
      const r = await register();
      out('registered', r);
      assignedHub = r.assignedHub;
      deviceId = r.deviceId;
    }
    step = 'hub';
    if (steps.includes('hub')) await hub(assignedHub, deviceId);
  } catch (err) {
    return fail(step, err);
  }
  clearTimeout(timer);
  finished = true;
  out('done');
  process.exit(0);
})();
