// Package factory is the factory bus protocol that programs a device's
// identity over a UART: the device side (Device, run by `devid-agent
// factory`) and what both sides share, the frame codec, the line reader
// and the protocol's vocabulary (states, NAK reasons). The jig side, run
// by `devid-jig program`, is enroll/station/jig; this package never
// imports it.
//
// The protocol is line-oriented ASCII so that a person can drive it from a
// terminal. Every frame is "SEQ VERB ARG... *CRC32" and at most MaxLine
// bytes; the device answers each request with "SEQ OK ..." or
// "SEQ NAK REASON DETAIL...". Payloads (the CSR, the certificate chain)
// move in base64 chunks of at most Chunk bytes, one stop-and-wait request
// each, so they fit small UART buffers. Every reply fits MaxLine too.
// Every command is idempotent, and a repeated request (the same sequence
// number, verb and arguments, however its CRC is cased) gets the same
// reply without being executed twice, so the jig can always time out and
// retry. While a command runs long the device sends "SEQ BUSY", so that
// the jig can tell a working board from a dead one.
//
// docs/factory-protocol.md is the normative description.
package factory
