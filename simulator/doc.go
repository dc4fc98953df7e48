// Package simulator is an independent implementation of Azure IoT Hub
// Device Provisioning Service, IoT Hub and a CA, for tests, demos and
// load. It must never import devid's dps or agent packages, so that the
// two implementations of the wire protocol cross-check each other.
//
// It is split by service over one registry (registry.go, persisted in
// bbolt by store.go): the DPS device endpoint (dps*.go), the IoT Hub
// device endpoint (hub*.go), both on one MQTT broker (broker.go,
// hooks.go), and the control plane with one small type per resource
// (control*.go). Start runs it in the calling process; devid-sim
// (cmd/devid-sim) is Start plus a CLI. docs/simulator.md documents the
// behaviour and the layout.
package simulator
