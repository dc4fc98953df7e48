// Package conformance tests devid-sim from the outside, as an independent
// client would: the official Azure IoT Node.js SDK (node/) drives the full
// DPS → IoT Hub flow, and raw MQTT 3.1.1 packets over real TLS probe every
// error path docs/simulator.md describes.
//
// The tests start the real devid-sim binary through simulator/simtest and
// check the simulator's own records through its control plane, so a bug on
// either side of the wire shows up as a failure here. Nothing in this package
// imports the simulator's implementation, dps or agent.
//
// The Node SDK test needs node_modules (scripts/deps.sh runs npm ci). Without
// it the test skips, unless DEVID_REQUIRE asks for node (make sets it; see
// hal/hosttest), in which case it fails.
package conformance
