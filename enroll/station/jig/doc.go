// Package jig is the station side of the factory bus protocol: a Jig
// sends requests to one device over a serial port and re-sends on
// timeouts, corrupt replies and frame-level NAKs; Program runs a whole
// programming pass (HELLO, CSR, attest, sign, INSTALL, STATUS) with an
// Issuer (the local CA in enroll/station/ca, or EST). The attest step
// checks TPM key attestation through a Verifier (enroll/attest behind an
// adapter, attest.go) and hands its outcome to an AttestingIssuer.
//
// The frame codec, the line reader and the protocol's vocabulary (states
// and NAK reasons) come from enroll/factory, which also holds the device
// side. docs/factory-protocol.md is the normative description.
package jig
