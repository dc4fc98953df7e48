// Package dps is a device-side client for Azure IoT Hub Device
// Provisioning Service and IoT Hub over MQTT 3.1.1 with X.509.
//
// It takes a crypto.Signer and a certificate chain, and imports no other
// devid package, so it can be used on its own.
package dps
