// Package enroll is the device identity: keys, CSRs, the certificate
// store, the factory bus protocol and the EST client. The factory
// station (the jig side of the bus and the local CA) lives apart in
// enroll/station, which no device-side package imports. The pieces live
// in sub-packages; see docs/architecture.md.
package enroll
