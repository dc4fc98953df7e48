// Package rotate renews and rotates the device credential without ever
// leaving the device unable to connect.
//
// It has three parts:
//
//   - Policy: when to renew (a share of the lifetime with jitter, a retry
//     period, a margin before expiry), computed from an injected time so
//     that tests run on simulated time. The grammar is in docs/rotation.md.
//   - Rotator: a two-phase commit with a journal in the state directory.
//     The new key and certificate are staged under their own names,
//     proved by a caller-supplied probe (connect to the hub), swapped in
//     by rename, and only then is the old key destroyed. A probe that could
//     not reach the service at all says so (ErrNotReached), and the
//     candidate is then committed unproven. Recover resolves a rotation
//     that a power cut interrupted.
//   - Issuer: the path that turns a CSR into a certificate chain,
//     recorded with the identity so that renewal always knows which path
//     applies. EST re-enrollment (ESTIssuer) is here; the issuers that
//     speak MQTT to DPS or the hub are in devid/agent/renewal, so that the
//     device identity knows no MQTT client.
package rotate
