package factory

// The protocol's vocabulary beyond the frame syntax (frame.go): what the
// device reports and why it refuses. The device sends these words and the
// jig (enroll/station/jig) reads them, so they live here, on the side
// both may import.

// State is the device's programming state as HELLO and STATUS report it.
type State string

// States. "inconsistent" means a chain is stored that the key does not
// match (or the key is gone); only RESET leaves it.
const (
	StateBlank        State = "blank"
	StateKeyed        State = "keyed"
	StateProgrammed   State = "programmed"
	StateInconsistent State = "inconsistent"
	StateError        State = "error"
)

// Device-side NAK reasons for well-formed frames.
const (
	ReasonUnknown  = "unknown-command" // verb not known
	ReasonArgs     = "bad-args"        // wrong number or form of arguments
	ReasonState    = "state"           // command not valid now (e.g. DATA before BEGIN)
	ReasonOffset   = "offset"          // DATA offset is not where the upload stands
	ReasonSize     = "size"            // payload larger than MaxPayload or than announced
	ReasonDigest   = "digest"          // SHA-256 of the upload does not match BEGIN
	ReasonCert     = "cert"            // chain refused; next word is a certstore reason
	ReasonRefused  = "refused"         // would re-key a device that has a certificate
	ReasonToken    = "token"           // RESET confirmation token wrong or not requested
	ReasonInternal = "internal"        // the device failed (key backend, disk)
	// ReasonUnsupported: ATTEST or ACTIVATE on a device without an
	// Attester (no TPM key); HELLO did not offer attest=1.
	ReasonUnsupported = "unsupported"
	// ReasonAttest: the device could not attest; the next word is one of
	// the Attest* causes (attest.go).
	ReasonAttest = "attest"
)
