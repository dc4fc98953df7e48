'use strict';
// Test-only DNS stand-in, loaded with `node --require ./shim.js`.
//
// The Azure IoT SDK always dials `{host}:8883`, and the simulated hub names
// (e.g. sim-hub-1.azure-devices.net) do not resolve here. DEVID_RESOLVE maps
// "host:port" to the simulator's loopback address, like an /etc/hosts entry
// with a port:
//
//   DEVID_RESOLVE="sim-hub-1.azure-devices.net:8883=127.0.0.1:40123,..."
//
// Only the address that is dialled changes. TLS still sends the original host
// as SNI (servername) and still verifies the server certificate against it,
// so nothing the SDK does on the wire is altered.
const tls = require('tls');
const net = require('net');

const table = new Map();
for (const entry of (process.env.DEVID_RESOLVE || '').split(',')) {
  const s = entry.trim();
  if (!s) continue;
  const eq = s.indexOf('=');
  if (eq < 0) throw new Error(`shim: DEVID_RESOLVE entry ${JSON.stringify(s)} lacks "="`);
  const from = s.slice(0, eq).toLowerCase();
  const to = s.slice(eq + 1);
  const colon = to.lastIndexOf(':');
  if (colon < 0) throw new Error(`shim: DEVID_RESOLVE target ${JSON.stringify(to)} lacks a port`);
  table.set(from, { host: to.slice(0, colon), port: Number(to.slice(colon + 1)) });
}

// normalize turns the (options) / (port, host, options) call forms into one options object.
function normalize(args) {
  if (args.length && typeof args[0] === 'object' && args[0] !== null) {
    return { opts: Object.assign({}, args[0]), rest: args.slice(1) };
  }
  const opts = {};
  let i = 0;
  if (typeof args[i] === 'number' || (typeof args[i] === 'string' && /^\d+$/.test(args[i]))) opts.port = Number(args[i++]);
  if (typeof args[i] === 'string') opts.host = args[i++];
  if (typeof args[i] === 'object' && args[i] !== null) Object.assign(opts, args[i++]);
  return { opts, rest: args.slice(i) };
}

function remap(opts, isTLS) {
  const host = String(opts.host || opts.hostname || 'localhost');
  const port = Number(opts.port || (isTLS ? 8883 : 0));
  const hit = table.get(`${host.toLowerCase()}:${port}`);
  if (!hit) return opts;
  if (isTLS && !opts.servername && net.isIP(host) === 0) opts.servername = host;
  // checkServerIdentity defaults to the servername, so verification stays on the real name.
  opts.host = hit.host;
  delete opts.hostname;
  opts.port = hit.port;
  if (process.env.DEVID_SHIM_DEBUG) process.stderr.write(`shim: ${host}:${port} -> ${hit.host}:${hit.port}\n`);
  return opts;
}

const origTLS = tls.connect;
tls.connect = function connect(...args) {
  const { opts, rest } = normalize(args);
  return origTLS.call(this, remap(opts, true), ...rest);
};
const origNet = net.connect;
net.connect = net.createConnection = function connect(...args) {
  const { opts, rest } = normalize(args);
  if (opts.path) return origNet.call(this, opts, ...rest);
  return origNet.call(this, remap(opts, false), ...rest);
};
