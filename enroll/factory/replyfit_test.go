package factory_test

import (
	"bytes"
	"log/slog"
	"path/filepath"
	"strings"
	"testing"

	"devid/enroll/certstore"
	"devid/enroll/factory"
	"devid/enroll/internal/pkitest"
	"devid/enroll/keys"
)

// TestRepliesFitMaxLine: a request may echo its words back in a NAK
// (an unknown verb, a bad offset), so a request near MaxLine made a reply
// over it (make fuzz: a 257-byte reply, FuzzHandle/409fa4ee4363ba63),
// which the jig must refuse as too long. Every reply fits; the cut
// human text ends in "...", and the reason stays whole.
func TestRepliesFitMaxLine(t *testing.T) {
	t.Parallel()
	ca := pkitest.NewCA("fit")
	state := filepath.Join(t.TempDir(), "state")
	ks, err := keys.Open("file:", state)
	if err != nil {
		t.Fatal(err)
	}
	d := &factory.Device{ID: "fit-1", Keys: ks, Certs: certstore.Open(state, ca.Pool()), Log: slog.New(slog.DiscardHandler)}
	crcFrame := func(seq int, words ...string) []byte {
		return bytes.TrimSpace(factory.Encode(seq, words[0], words[1:]...))
	}
	fill := func(prefixLen int) string { return strings.Repeat("Z", factory.MaxLine-prefixLen) }
	for _, tc := range []struct {
		name   string
		line   []byte
		reason string
	}{
		{"unknown verb", crcFrame(999999, fill(len("999999  *00000000"))), "unknown-command"},
		{"verb without CRC", []byte("999999 " + fill(len("999999 "))), "crc-missing"},
		{"bad READ offset", crcFrame(999999, "READ", fill(len("999999 READ  *00000000"))), "bad-args"},
		{"bad INSTALL sub-command", crcFrame(999999, "INSTALL", fill(len("999999 INSTALL  *00000000"))), "bad-args"},
		{"bad sequence", []byte(strings.Repeat("9", 200) + " HELLO"), "syntax"},
	} {
		if len(tc.line) > factory.MaxLine {
			t.Fatalf("%s: test line is %d bytes", tc.name, len(tc.line))
		}
		resp := d.Handle(tc.line)
		line := bytes.TrimSuffix(resp, []byte("\n"))
		if len(line) > factory.MaxLine {
			t.Errorf("%s: reply is %d bytes, over MaxLine %d: %q", tc.name, len(line), factory.MaxLine, line)
			continue
		}
		fr, err := factory.ParseFrame(line)
		if err != nil || fr.Verb != "NAK" || len(fr.Args) == 0 || fr.Args[0] != tc.reason {
			t.Errorf("%s: reply %q (%v), want NAK %s", tc.name, line, err, tc.reason)
		}
	}
}

// TestEncodeFitKeepsShortReplies: a reply that fits is not changed, and a
// cut one keeps its first words whole.
func TestEncodeFitKeepsShortReplies(t *testing.T) {
	t.Parallel()
	if a, b := factory.EncodeFit(3, "NAK", 1, "args", "short", "text"), factory.Encode(3, "NAK", "args", "short", "text"); !bytes.Equal(a, b) {
		t.Fatalf("EncodeFit changed a reply that fits: %q vs %q", a, b)
	}
	long := factory.EncodeFit(3, "NAK", 1, "args", strings.Repeat("w", 300), "more")
	fr, err := factory.ParseFrame(bytes.TrimSuffix(long, []byte("\n")))
	if len(long)-1 > factory.MaxLine || err != nil || fr.Args[0] != "args" || !strings.HasSuffix(fr.Args[len(fr.Args)-1], "...") {
		t.Fatalf("cut reply %q (%d bytes): %+v %v", long, len(long)-1, fr, err)
	}
}
