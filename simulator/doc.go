// Package simulator is an independent implementation of Azure IoT Hub
// Device Provisioning Service, IoT Hub and a CA, for tests, demos and
// load. It must never import devid's dps or agent packages, so that the
// two implementations of the wire protocol cross-check each other.
package simulator
