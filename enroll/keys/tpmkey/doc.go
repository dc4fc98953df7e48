// Package tpmkey is the "tpm" key backend: a non-exportable ECC P-256 (or,
// with curve=p384, P-384) key created inside the TPM and kept across
// reboots as a key blob file
// (TSS2 PRIVATE KEY PEM) in the state directory, loaded under the TPM's
// storage root key. It also registers "auto", which picks the TPM when
// one is present and the file backend otherwise.
//
// Import it for its side effect:
//
//	import _ "devid/enroll/keys/tpmkey"
//
// Spec grammar (the part after "tpm:"):
//
//	tpm:[ADDRESS][,blob=PATH][,curve=p256|p384]
//
//	ADDRESS  empty or "auto"   /dev/tpmrm0, else /dev/tpm0
//	         /dev/tpmrm0       a TPM character device
//	         unix:PATH         swtpm raw data socket (tests, virtual board)
//	         tcp:HOST:PORT     swtpm raw data port
//	blob     where the key blob lives; relative paths are inside the state
//	         directory; default STATE/device.tpmkey
//	curve    curve of a key Create makes: p256 (default) or p384 (ECC NIST
//	         P-384, signs SHA-384; the TPM must support it). Load takes
//	         the curve from the blob.
//
// Examples: "tpm:", "tpm:/dev/tpmrm0", "tpm:unix:/run/swtpm/tpm.sock",
// "tpm:tcp:127.0.0.1:2321,blob=device-next.tpmkey".
// See docs/tpm.md.
//
// Build with -tags notpm to leave TPM support out: "tpm:" specs then fail
// with a clear error and "auto" always uses the file backend.
package tpmkey
