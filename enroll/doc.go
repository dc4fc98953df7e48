// Package enroll is the device identity: keys, CSRs, the certificate
// store, the factory bus protocol (device and jig sides) and the CA
// back-ends. The pieces live in sub-packages; see docs/architecture.md.
package enroll
