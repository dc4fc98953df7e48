package factory

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"strconv"

	"devid/enroll/keys"
)

// Attester proves to the jig that the device key lives in a TPM (the
// ATTEST and ACTIVATE commands, docs/factory-protocol.md section 6). The
// device side does not import the TPM code: the key backend provides an
// Attester (for a TPM key, hal/tpm's Attest and ActivateCredential for
// the device key), and a nil Device.Attester means the device cannot
// attest, so HELLO does not offer it.
type Attester interface {
	// Attest certifies the device key with the TPM's attestation key
	// over nonce and returns the statement (JSON of the enroll/attest
	// Statement). An error wrapping ErrNoEKCert means the TPM holds no
	// EK certificate.
	Attest(ctx context.Context, nonce []byte) (statement []byte, err error)
	// Activate runs TPM2_ActivateCredential on the jig's challenge and
	// returns the secret it recovers.
	Activate(ctx context.Context, credentialBlob, encryptedSecret []byte) ([]byte, error)
}

// ErrNoEKCert is what an Attester wraps when the TPM has no EK
// certificate: the device answers ATTEST with "NAK attest no-ek-cert",
// which the jig reports as that refusal rather than a device failure.
var ErrNoEKCert = errors.New("TPM has no EK certificate")

// Attestation limits.
const (
	// NonceSize is the size of the ATTEST nonce in bytes (64 hex digits).
	NonceSize = 32
	// MaxActivate bounds the ACTIVATE upload (credential blob plus
	// encrypted secret; an RSA-2048 EK needs about 340 bytes).
	MaxActivate = 2048
	// MaxSecret bounds the secret ACTIVATE COMMIT returns (a TPM digest).
	MaxSecret = 64
)

// Causes after "NAK attest": why the device could not attest.
const (
	AttestNoEKCert   = "no-ek-cert" // the TPM has no EK certificate
	AttestActivation = "activation" // TPM2_ActivateCredential failed: the challenge is not for this TPM
	AttestFailed     = "failed"     // the TPM or the key backend failed; the detail says how
)

// activation is an ACTIVATE upload in progress.
type activation struct {
	buf            []byte
	blobN, secretN int
	digest         []byte
	open           bool
}

// attest answers "ATTEST NONCE" and "ATTEST READ OFFSET".
func (d *Device) attest(ctx context.Context, args []string) []string {
	if d.Attester == nil {
		return nak(ReasonUnsupported, "this", "device", "has", "no", "TPM", "attestation")
	}
	if len(args) == 2 && args[0] == "READ" {
		return readChunk(d.attOut, args[1], []string{"ATTEST", "DATA"}, "ATTEST", d.chunk())
	}
	if len(args) != 1 {
		return nak(ReasonArgs, "usage:", "ATTEST", "NONCE", "or", "ATTEST", "READ", "OFFSET")
	}
	nonce, err := hex.DecodeString(args[0])
	if err != nil || len(nonce) != NonceSize {
		return nak(ReasonArgs, "NONCE", "must", "be", strconv.Itoa(2*NonceSize), "hex", "digits")
	}
	if nak := d.needKey(); nak != nil {
		return nak
	}
	st, err := d.Attester.Attest(ctx, nonce)
	switch {
	case errors.Is(err, ErrNoEKCert):
		return nak(ReasonAttest, append([]string{AttestNoEKCert}, Words(err.Error())...)...)
	case err != nil:
		return nak(ReasonAttest, append([]string{AttestFailed}, Words(err.Error())...)...)
	case len(st) == 0 || len(st) > MaxPayload:
		return nak(ReasonAttest, AttestFailed, "statement", "is", strconv.Itoa(len(st)), "bytes,", "want", "1.."+strconv.Itoa(MaxPayload))
	}
	d.attOut = st
	sum := sha256.Sum256(st)
	return []string{"OK", "ATTEST", "size=" + strconv.Itoa(len(st)), "sha256=" + hex.EncodeToString(sum[:])}
}

// needKey is nil when the device has a key, else the NAK to send.
func (d *Device) needKey() []string {
	key, err := d.Keys.Load()
	defer keys.Close(key)
	switch {
	case err == nil:
		return nil
	case errors.Is(err, keys.ErrNoKey):
		return d.stateNAK(ReasonState)
	}
	return nak(ReasonInternal, Words(err.Error())...)
}

// activate answers ACTIVATE BEGIN, DATA and COMMIT: the upload of the
// jig's credential challenge and its activation.
func (d *Device) activate(ctx context.Context, args []string) []string {
	if d.Attester == nil {
		return nak(ReasonUnsupported, "this", "device", "has", "no", "TPM", "attestation")
	}
	if len(args) == 0 {
		return nak(ReasonArgs, "usage:", "ACTIVATE", "BEGIN|DATA|COMMIT")
	}
	a := &d.act
	switch sub := args[0]; sub {
	case "BEGIN":
		if len(args) != 4 {
			return nak(ReasonArgs, "usage:", "ACTIVATE", "BEGIN", "BLOBSIZE", "SECRETSIZE", "SHA256")
		}
		if d.attOut == nil {
			return nak(ReasonState, "no", "ATTEST", "in", "this", "session;", "send", "ATTEST")
		}
		bn, err1 := strconv.Atoi(args[1])
		sn, err2 := strconv.Atoi(args[2])
		if err1 != nil || err2 != nil || bn <= 0 || sn <= 0 || bn > MaxActivate || sn > MaxActivate || bn+sn > MaxActivate {
			return nak(ReasonSize, "sizes", args[1], args[2], "not", "positive", "with", "a", "sum", "of", "at", "most", strconv.Itoa(MaxActivate))
		}
		sum, err := hex.DecodeString(args[3])
		if err != nil || len(sum) != sha256.Size {
			return nak(ReasonArgs, "SHA256", "must", "be", "64", "hex", "digits")
		}
		*a = activation{buf: make([]byte, 0, bn+sn), blobN: bn, secretN: sn, digest: sum, open: true}
		return []string{"OK", "ACTIVATE", "BEGIN", "size=" + strconv.Itoa(bn+sn)}
	case "DATA":
		if len(args) != 3 {
			return nak(ReasonArgs, "usage:", "ACTIVATE", "DATA", "OFFSET", "BASE64")
		}
		if !a.open {
			return nak(ReasonState, "no", "upload;", "send", "ACTIVATE", "BEGIN")
		}
		var nk []string
		a.buf, nk = appendChunk(a.buf, a.blobN+a.secretN, args[1], args[2], d.chunk())
		if nk != nil {
			return nk
		}
		return d.dataAck("ACTIVATE", len(a.buf))
	case "COMMIT":
		if len(args) != 1 {
			return nak(ReasonArgs, "ACTIVATE", "COMMIT", "takes", "no", "arguments")
		}
		if !a.open {
			return nak(ReasonState, "no", "upload;", "send", "ACTIVATE", "BEGIN")
		}
		if len(a.buf) != a.blobN+a.secretN {
			return nak(ReasonSize, "have", strconv.Itoa(len(a.buf)), "of", strconv.Itoa(a.blobN+a.secretN), "bytes")
		}
		if sum := sha256.Sum256(a.buf); !bytes.Equal(sum[:], a.digest) {
			return nak(ReasonDigest, "upload", "SHA-256", "is", hex.EncodeToString(sum[:]))
		}
		// The upload stays open: repeating COMMIT activates again and
		// recovers the same secret (idempotent).
		secret, err := d.Attester.Activate(ctx, a.buf[:a.blobN], a.buf[a.blobN:])
		if err != nil {
			return nak(ReasonAttest, append([]string{AttestActivation}, Words(err.Error())...)...)
		}
		if len(secret) == 0 || len(secret) > MaxSecret {
			return nak(ReasonAttest, AttestFailed, "secret", "is", strconv.Itoa(len(secret)), "bytes,", "want", "1.."+strconv.Itoa(MaxSecret))
		}
		return []string{"OK", "ACTIVATE", "COMMIT", "secret=" + base64.StdEncoding.EncodeToString(secret)}
	default:
		return nak(ReasonArgs, "ACTIVATE", sub, "is", "not", "BEGIN|DATA|COMMIT")
	}
}

// readChunk answers a chunked readout of out (READ, ATTEST READ): at most
// Chunk bytes from the offset in off, as reply words after the prefix.
// what names the command that makes out.
func readChunk(out []byte, off string, prefix []string, what string, chunk int) []string {
	n, err := strconv.Atoi(off)
	if err != nil || n < 0 {
		return nak(ReasonArgs, "offset", off, "is", "not", "a", "number")
	}
	if out == nil {
		return nak(ReasonState, "no", what, "in", "this", "session;", "send", what)
	}
	if n >= len(out) {
		return nak(ReasonOffset, "offset", off, "beyond", "size", strconv.Itoa(len(out)))
	}
	end := min(n+chunk, len(out))
	return append(append([]string{"OK"}, prefix...), strconv.Itoa(n), base64.StdEncoding.EncodeToString(out[n:end]))
}

// appendChunk appends one upload chunk (DATA OFFSET BASE64) to buf, which
// may grow to size: the offset must be where the upload stands, or repeat
// bytes already received (a retransmission, accepted and ignored). It
// returns the new buf, or the NAK to send.
func appendChunk(buf []byte, size int, offArg, b64 string, max int) ([]byte, []string) {
	off, err := strconv.Atoi(offArg)
	if err != nil || off < 0 {
		return buf, nak(ReasonArgs, "offset", offArg, "is", "not", "a", "number")
	}
	chunk, err := base64.StdEncoding.DecodeString(b64)
	if err != nil || len(chunk) == 0 || len(chunk) > max {
		return buf, nak(ReasonArgs, "chunk", "is", "not", "1.."+strconv.Itoa(max), "bytes", "of", "base64")
	}
	switch {
	case off == len(buf):
		if off+len(chunk) > size {
			return buf, nak(ReasonSize, "upload", "would", "exceed", strconv.Itoa(size), "bytes")
		}
		return append(buf, chunk...), nil
	case off+len(chunk) <= len(buf) && bytes.Equal(buf[off:off+len(chunk)], chunk):
		return buf, nil // a retransmitted chunk we already have: harmless
	}
	return buf, nak(ReasonOffset, "have", strconv.Itoa(len(buf)), "bytes,", "got", "offset", offArg)
}
