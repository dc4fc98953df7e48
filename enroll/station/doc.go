// Package station is the factory station: the side of the factory bus
// that signs and installs identities, as opposed to the device side in
// the rest of enroll. It runs on the jig PC, never on a device.
//
//	station/ca   the local CA: policy, issuance ledger, CRL
//	station/jig  the jig side of the factory bus and the programming pass
//	station/cli  devid-jig's commands (enroll/cmd/devid-jig is a thin main)
//
// This package itself holds what jig and ca share: Attestation, the
// outcome of the jig's attest step that the CA records.
//
// Device-side packages (everything else under enroll, and agent) never
// import station, and the devid-agent binary never links it;
// agent/layering_test.go enforces both. The station may import the
// device side's shared pieces: the frame codec of enroll/factory, csr,
// certstore and est. docs/architecture.md has the whole tree.
package station
