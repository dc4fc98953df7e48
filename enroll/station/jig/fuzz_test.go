package jig_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"io"
	"testing"
	"time"

	"devid/enroll/certstore"
	"devid/enroll/factory"
	"devid/enroll/internal/pkitest"
	"devid/enroll/station/jig"
)

// replayPort is a device that answers with a fixed byte stream, whatever
// the jig sends, then reports EOF.
type replayPort struct{ r *bytes.Reader }

func (p *replayPort) Read(b []byte) (int, error)      { return p.r.Read(b) }
func (p *replayPort) Write(b []byte) (int, error)     { return len(b), nil }
func (p *replayPort) Close() error                    { return nil }
func (p *replayPort) SetReadDeadline(time.Time) error { return nil }

var _ io.ReadWriteCloser = (*replayPort)(nil)

// replies renders device reply frames.
func replies(frames ...[]string) []byte {
	var b bytes.Buffer
	for i, f := range frames {
		b.Write(factory.Encode(i+1, f[0], f[1:]...))
	}
	return b.Bytes()
}

// FuzzJigReplies feeds arbitrary device output to every jig command in
// turn (HELLO, CSR with its READs, CHAIN with its READs, STATUS, INSTALL, RESET, ATTEST with
// its READs, ACTIVATE): the jig must
// never panic or hang, and what it accepts must be consistent: a HELLO
// with an id and a usable chunk size, a CSR that matches its announced
// size and SHA-256.
func FuzzJigReplies(f *testing.F) {
	csr := []byte("ABC")
	sum := sha256.Sum256(csr)
	f.Add(replies(
		[]string{"OK", "HELLO", "proto=1", "id=board-1", "key=file", "state=blank", "chunk=144", "max=256"},
		[]string{"OK", "CSR", "size=3", "sha256=" + hex.EncodeToString(sum[:])},
		[]string{"OK", "DATA", "0", "QUJD"},
		[]string{"OK", "STATUS", "state=csr-issued", "id=board-1", "key=file"},
		[]string{"OK", "INSTALL", "BEGIN"},
		[]string{"OK", "INSTALL", "DATA"},
		[]string{"OK", "INSTALL", "COMMIT", "serial=01", "not_after=2036-01-01T00:00:00Z"},
		[]string{"OK", "RESET", "token=0a1b2c3d"},
		[]string{"OK", "RESET"},
		[]string{"OK", "ATTEST", "size=3", "sha256=" + hex.EncodeToString(sum[:])},
		[]string{"OK", "ATTEST", "DATA", "0", "QUJD"},
		[]string{"OK", "ACTIVATE", "BEGIN", "size=2"},
		[]string{"OK", "ACTIVATE", "DATA", "have=2"},
		[]string{"OK", "ACTIVATE", "COMMIT", "secret=c2VjcmV0"},
	))
	f.Add(replies([]string{"OK", "HELLO", "proto=1", "id=b", "attest=1"}, []string{"NAK", "state"}, []string{"OK", "STATUS"},
		[]string{"NAK", "x"}, []string{"NAK", "x"}, []string{"NAK", "x"}, []string{"NAK", "x"}, []string{"NAK", "x"},
		[]string{"OK", "ATTEST", "size=3", "sha256=" + hex.EncodeToString(sum[:])}, []string{"OK", "DATA", "0", "QUJD"},
		[]string{"NAK", "attest", "no-ek-cert", "none"}, []string{"OK", "ACTIVATE", "COMMIT", "secret="}))
	f.Add(replies([]string{"NAK", "unknown-command", "HELLO"}))
	f.Add(append(factory.Encode(1, "BUSY"), replies([]string{"OK", "HELLO", "proto=1", "id=b"})...))
	f.Add(replies([]string{"OK", "HELLO", "proto=1", "id=b"}, []string{"OK", "CHAIN", "size=3", "sha256=" + hex.EncodeToString(sum[:])}, []string{"OK", "CHAIN", "DATA", "0", "QUJD"}))
	f.Add(append([]byte("- NAK crc computed 1 *00000000\n- NAK timeout x\n"), replies([]string{"OK", "HELLO", "proto=2", "id=x"})...))
	f.Add(replies([]string{"OK", "HELLO", "proto=1", "id=b", "chunk=-5"}, []string{"OK", "CSR", "size=99999999", "sha256=zz"}))
	f.Add(replies([]string{"OK", "HELLO", "proto=1", "id=b"}, []string{"OK", "CSR", "size=3", "sha256=" + hex.EncodeToString(sum[:])}, []string{"OK", "DATA", "0", "QUJDRA=="}))
	// v2: a windowed CSR readout (two chunks, the second reply first
	// lost), a DER chain readout, a windowed ACTIVATE upload.
	f.Add(replies([]string{"OK", "HELLO", "proto=2", "id=b", "chunk=2"}, []string{"OK", "CSR", "size=3", "sha256=" + hex.EncodeToString(sum[:])},
		[]string{"OK", "DATA", "0", "QUI="}, []string{"OK", "DATA", "2", "Qw=="}, []string{"OK", "DATA", "0", "QUI="}))
	f.Add(append(replies([]string{"OK", "HELLO", "proto=2", "id=b"}, []string{"OK", "CSR", "size=3", "sha256=" + hex.EncodeToString(sum[:])}),
		[]byte("- NAK crc x *00000000\n3 OK DATA 0 QUJD *00000000\n")...))
	f.Add(replies([]string{"OK", "HELLO", "proto=2", "id=b"}, []string{"NAK", "state"}, []string{"OK", "CHAIN", "size=3", "sha256=" + hex.EncodeToString(sum[:])},
		[]string{"OK", "CHAIN", "DATA", "0", "QUJD"}, []string{"OK", "STATUS"}, []string{"OK", "INSTALL", "BEGIN"}, []string{"OK", "have=9"}))
	f.Add([]byte("1 OK HELLO\r\n\r\n" + string(bytes.Repeat([]byte("x"), 300)) + "\n"))
	// v2: HELLO 2, CSR and READ 0 as one window, then the INSTALL window
	// (BEGIN, DATA, COMMIT), one reply lost and one refused.
	f.Add(replies([]string{"OK", "HELLO", "proto=2", "id=b"}, []string{"OK", "CSR", "size=3", "sha256=" + hex.EncodeToString(sum[:])},
		[]string{"OK", "DATA", "0", "QUJD"}, []string{"OK", "INSTALL", "BEGIN", "size=3"}, []string{"OK", "have=3"},
		[]string{"OK", "INSTALL", "COMMIT", "serial=01", "state=programmed"}))
	f.Add(replies([]string{"OK", "HELLO", "proto=2", "id=b"}, []string{"NAK", "refused", "x"}, []string{"NAK", "state"},
		[]string{"OK", "HELLO", "proto=1", "id=b"}, []string{"OK", "have=1"}, []string{"NAK", "cert", "untrusted"}))
	cert := pkitest.NewCA("fuzz").Issuer
	f.Fuzz(func(t *testing.T, stream []byte) {
		j := jig.New(&replayPort{r: bytes.NewReader(stream)})
		j.SetSeq(0)
		j.Retries = 1
		ctx := context.Background()
		if h, der, csrErr, err := j.HelloCSR(ctx); err == nil && csrErr == nil {
			if h.DeviceID == "" || len(der) == 0 || len(der) > factory.MaxPayload {
				t.Fatalf("accepted HELLO %+v and a CSR of %d bytes", h, len(der))
			}
		}
		if in, err := j.Install(ctx, certstore.EncodePEM(cert), 0); err == nil && j.V2() && in == nil {
			t.Fatal("INSTALL accepted without a COMMIT reply")
		}
		if h, err := j.Hello(ctx); err == nil {
			v1 := h.Proto == factory.ProtocolVersion && h.Chunk <= factory.Chunk
			v2 := h.Proto == factory.ProtocolV2 && h.Chunk <= factory.ChunkV2
			if h.DeviceID == "" || h.Chunk < 1 || !v1 && !v2 {
				t.Fatalf("accepted HELLO %+v", h)
			}
		}
		if der, err := j.CSR(ctx); err == nil {
			if len(der) == 0 || len(der) > factory.MaxPayload {
				t.Fatalf("accepted a CSR of %d bytes", len(der))
			}
		}
		if c, err := j.Chain(ctx); err == nil && (len(c) == 0 || len(c) > factory.MaxPayload) {
			t.Fatalf("accepted a chain of %d bytes", len(c))
		}
		_, _ = j.Status(ctx)
		_, _ = j.Install(ctx, []byte("chain"), 0)
		_ = j.Reset(ctx)
		if st, err := j.Attest(ctx, make([]byte, factory.NonceSize)); err == nil && (len(st) == 0 || len(st) > factory.MaxPayload) {
			t.Fatalf("accepted a statement of %d bytes", len(st))
		}
		if sec, err := j.Activate(ctx, []byte("blob"), []byte("secret"), 0); err == nil && (len(sec) == 0 || len(sec) > factory.MaxSecret) {
			t.Fatalf("accepted a secret of %d bytes", len(sec))
		}
		if j.Received > len(stream)+1 {
			t.Fatalf("received %d bytes from a %d-byte stream", j.Received, len(stream))
		}
	})
}
