package factory_test

import (
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"slices"
	"strconv"
	"strings"
	"testing"

	"devid/enroll/factory"
)

// TestV2Negotiation: a bare HELLO is version 1 and offers v2=1; HELLO 2
// opens version 2 (chunk 162, no v2=1); a bare HELLO returns to 1; a
// device with NoV2 answers HELLO 2 as a device from before v2.
func TestV2Negotiation(t *testing.T) {
	t.Parallel()
	d := newAttestDevice(t, nil)
	if r := ask(t, d, 1, "HELLO"); !slices.Contains(r, "proto=1") || !slices.Contains(r, "v2=1") || !slices.Contains(r, "chunk=144") {
		t.Fatalf("HELLO: %q", r)
	}
	if r := ask(t, d, 2, "HELLO", "2"); !slices.Contains(r, "proto=2") || slices.Contains(r, "v2=1") || !slices.Contains(r, "chunk=162") {
		t.Fatalf("HELLO 2: %q", r)
	}
	if r := ask(t, d, 3, "HELLO", "3"); r[0] != "NAK" || r[1] != factory.ReasonArgs {
		t.Fatalf("HELLO 3: %q", r)
	}
	if r := ask(t, d, 4, "HELLO"); !slices.Contains(r, "proto=1") {
		t.Fatalf("HELLO after HELLO 2: %q", r)
	}
	old := newAttestDevice(t, nil)
	old.NoV2 = true
	if r := ask(t, old, 1, "HELLO"); slices.Contains(r, "v2=1") {
		t.Fatalf("NoV2 HELLO offers v2: %q", r)
	}
	if r := ask(t, old, 2, "HELLO", "2"); r[0] != "NAK" || r[1] != factory.ReasonArgs {
		t.Fatalf("NoV2 HELLO 2: %q", r)
	}
}

// TestV2ChunksAndDER: READ gives 162-byte chunks in v2 and 144 in v1; a
// v2 INSTALL that is not DER certificates is NAK cert malformed.
func TestV2ChunksAndDER(t *testing.T) {
	t.Parallel()
	d := newAttestDevice(t, nil)
	ask(t, d, 1, "HELLO", "2")
	ask(t, d, 2, "CSR")
	r := ask(t, d, 3, "READ", "0")
	if b, err := base64.StdEncoding.DecodeString(r[3]); err != nil || len(b) != factory.ChunkV2 {
		t.Fatalf("v2 READ 0: %q", r)
	}
	junk := []byte(strings.Repeat("x", 200))
	sum := sha256.Sum256(junk)
	ask(t, d, 4, "INSTALL", "BEGIN", "200", hex.EncodeToString(sum[:]))
	if r := ask(t, d, 5, "INSTALL", "DATA", "0", base64.StdEncoding.EncodeToString(junk[:factory.ChunkV2])); r[0] != "OK" {
		t.Fatalf("162-byte DATA: %q", r)
	}
	ask(t, d, 6, "INSTALL", "DATA", "162", base64.StdEncoding.EncodeToString(junk[factory.ChunkV2:]))
	if r := ask(t, d, 7, "INSTALL", "COMMIT"); r[0] != "NAK" || r[1] != factory.ReasonCert || r[2] != "malformed" {
		t.Fatalf("COMMIT of junk in v2: %q", r)
	}
	ask(t, d, 8, "HELLO")
	r = ask(t, d, 9, "READ", "0")
	if b, err := base64.StdEncoding.DecodeString(r[3]); err != nil || len(b) != factory.Chunk {
		t.Fatalf("v1 READ 0: %q", r)
	}
	if r := ask(t, d, 10, "INSTALL", "DATA", "0", base64.StdEncoding.EncodeToString(junk[:factory.ChunkV2])); r[0] != "NAK" || r[1] != factory.ReasonArgs {
		t.Fatalf("162-byte DATA in v1: %q", r)
	}
}

// TestV2RepliesFitMaxLine: the longest v2 DATA reply (a full chunk of a
// maximal statement, the largest sequence number and offset) fits.
func TestV2RepliesFitMaxLine(t *testing.T) {
	t.Parallel()
	d := newAttestDevice(t, &fakeAttester{size: factory.MaxPayload})
	ask(t, d, 999989, "HELLO", "2")
	ask(t, d, 999990, "CSR")
	ask(t, d, 999991, "ATTEST", nonceHex)
	last := factory.MaxPayload - factory.ChunkV2 - 1
	if r := ask(t, d, 999999, "ATTEST", "READ", strconv.Itoa(last)); r[0] != "OK" || len(r[4]) != 216 {
		t.Fatalf("%q", r)
	}
}

// TestCSRRepeatIsStable: a second CSR (a new sequence number, so executed
// again) announces the same bytes, so READ after either reply matches.
func TestCSRRepeatIsStable(t *testing.T) {
	t.Parallel()
	d := newAttestDevice(t, nil)
	a := ask(t, d, 1, "CSR")
	b := ask(t, d, 2, "CSR")
	if !slices.Equal(a, b) || a[0] != "OK" {
		t.Fatalf("CSR twice: %q then %q", a, b)
	}
}

// TestV2BeginRepeatKeepsUpload: in v2 an INSTALL BEGIN with the size and
// SHA-256 of the upload under way keeps the bytes received (a jig resends
// BEGIN from a window after its DATA requests ran), another BEGIN starts
// over, and a COMMIT that finds the wrong bytes drops them. In v1 every
// BEGIN starts over, as before.
func TestV2BeginRepeatKeepsUpload(t *testing.T) {
	t.Parallel()
	junk := []byte(strings.Repeat("y", 200))
	sum := sha256.Sum256(junk)
	size, digest := strconv.Itoa(len(junk)), hex.EncodeToString(sum[:])
	chunk := func(off, end int) string { return base64.StdEncoding.EncodeToString(junk[off:end]) }

	d := newAttestDevice(t, nil)
	ask(t, d, 1, "HELLO", "2")
	if r := ask(t, d, 2, "INSTALL", "BEGIN", size, digest); r[0] != "OK" {
		t.Fatalf("BEGIN: %q", r)
	}
	ask(t, d, 3, "INSTALL", "DATA", "0", chunk(0, 162))
	// The same BEGIN again (its sequence number is not the last request's,
	// so it is executed): the 162 bytes stay.
	if r := ask(t, d, 2, "INSTALL", "BEGIN", size, digest); strings.Join(r, " ") != "OK INSTALL BEGIN size=200" {
		t.Fatalf("repeated BEGIN: %q", r)
	}
	if r := ask(t, d, 4, "INSTALL", "DATA", "162", chunk(162, 200)); strings.Join(r, " ") != "OK have=200" {
		t.Fatalf("DATA after a repeated BEGIN: %q", r)
	}
	// Another digest is another upload: it starts from 0.
	other := sha256.Sum256([]byte("other"))
	ask(t, d, 5, "INSTALL", "BEGIN", size, hex.EncodeToString(other[:]))
	wantNAK(t, ask(t, d, 6, "INSTALL", "DATA", "162", chunk(162, 200)), factory.ReasonOffset)
	// The complete upload does not match its BEGIN: COMMIT drops it, and
	// the same BEGIN then starts over.
	ask(t, d, 7, "INSTALL", "DATA", "0", chunk(0, 162))
	ask(t, d, 8, "INSTALL", "DATA", "162", chunk(162, 200))
	wantNAK(t, ask(t, d, 9, "INSTALL", "COMMIT"), factory.ReasonDigest)
	wantNAK(t, ask(t, d, 10, "INSTALL", "COMMIT"), factory.ReasonState)
	wantNAK(t, ask(t, d, 11, "INSTALL", "DATA", "0", chunk(0, 162)), factory.ReasonState)
	ask(t, d, 12, "INSTALL", "BEGIN", size, hex.EncodeToString(other[:]))
	wantNAK(t, ask(t, d, 13, "INSTALL", "DATA", "162", chunk(162, 200)), factory.ReasonOffset)

	// Version 1: BEGIN always starts a new upload.
	v1 := newAttestDevice(t, nil)
	ask(t, v1, 1, "HELLO")
	ask(t, v1, 2, "INSTALL", "BEGIN", size, digest)
	ask(t, v1, 3, "INSTALL", "DATA", "0", chunk(0, 144))
	ask(t, v1, 4, "INSTALL", "BEGIN", size, digest)
	wantNAK(t, ask(t, v1, 5, "INSTALL", "DATA", "144", chunk(144, 200)), factory.ReasonOffset)
}
