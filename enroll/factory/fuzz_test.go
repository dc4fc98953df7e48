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

func FuzzParseFrame(f *testing.F) {
	for _, s := range []string{
		string(bytes.TrimSpace(factory.Encode(1, "HELLO"))),
		string(bytes.TrimSpace(factory.Encode(999999, "INSTALL", "DATA", "0", "QUJD"))),
		string(bytes.TrimSpace(factory.Encode(factory.NoSeq, "NAK", "crc", "x"))),
		"1 HELLO", "- NAK", "1  X *00000000", "1 X *zzzzzzzz", "+1 X", "-1 X", "1", "",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, line []byte) {
		fr, err := factory.ParseFrame(line)
		if err != nil {
			if _, ok := err.(*factory.FrameError); !ok {
				t.Fatalf("error %T is not a *FrameError", err)
			}
			return
		}
		if fr.Verb == "" || (fr.Seq < 0 && fr.Seq != factory.NoSeq) || fr.Seq > factory.MaxSeq {
			t.Fatalf("accepted nonsense: %+v", fr)
		}
		if fr.CRC {
			// Re-encoding what was accepted yields a frame that parses the same.
			again, err := factory.ParseFrame(bytes.TrimSpace(factory.Encode(fr.Seq, fr.Verb, fr.Args...)))
			if err != nil || again.Seq != fr.Seq || again.Verb != fr.Verb || strings.Join(again.Args, " ") != strings.Join(fr.Args, " ") {
				t.Fatalf("round trip of %q: %+v, %v", line, again, err)
			}
		}
	})
}

func FuzzEncode(f *testing.F) {
	f.Add(7, "OK", "detail with spaces\x00\xff")
	f.Fuzz(func(t *testing.T, seq int, verb, arg string) {
		if seq < 0 || seq > factory.MaxSeq || verb == "" || strings.ContainsAny(verb, " ") {
			return
		}
		line := factory.Encode(seq, verb, arg)
		fr, err := factory.ParseFrame(bytes.TrimSuffix(line, []byte("\n")))
		if len(line)-1 > factory.MaxLine {
			return // too long for the wire; callers keep frames short
		}
		if err != nil {
			// Only a verb outside printable ASCII may fail: Encode sanitises arguments.
			for _, c := range []byte(verb) {
				if c < 0x21 || c > 0x7e {
					return
				}
			}
			t.Fatalf("Encode(%d, %q, %q) = %q does not parse: %v", seq, verb, arg, line, err)
		}
		if fr.Seq != seq || len(fr.Args) != 1 {
			t.Fatalf("round trip: %+v", fr)
		}
	})
}

// FuzzHandle feeds arbitrary lines to the device's command decoder: it
// must never panic, and every reply must be a valid frame carrying the
// request's sequence number or "-".
func FuzzHandle(f *testing.F) {
	ca := pkitest.NewCA("fuzz")
	state := filepath.Join(f.TempDir(), "state")
	ks, err := keys.Open("file:", state)
	if err != nil {
		f.Fatal(err)
	}
	d := &factory.Device{ID: "fuzz-1", Keys: ks, Certs: certstore.Open(state, ca.Pool()), Log: slog.New(slog.DiscardHandler)}
	for _, s := range [][]byte{
		factory.Encode(1, "HELLO"), factory.Encode(2, "STATUS"), factory.Encode(3, "CSR"), factory.Encode(4, "READ", "0"),
		factory.Encode(5, "READ", "99999"), factory.Encode(6, "INSTALL", "BEGIN", "10", strings.Repeat("0", 64)),
		factory.Encode(7, "INSTALL", "DATA", "0", "QUJD"), factory.Encode(8, "INSTALL", "COMMIT"),
		factory.Encode(9, "RESET"), factory.Encode(10, "RESET", "00000000"), factory.Encode(11, "INSTALL", "DATA", "-1", "===="),
		[]byte("12 status"), []byte("13 OK HELLO"),
		factory.Encode(14, "CHAIN"), factory.Encode(15, "CHAIN", "READ", "0"), factory.Encode(16, "CHAIN", "READ", "-7"),
		[]byte("17 BUSY *00000000"), bytes.ToUpper(factory.Encode(9, "RESET")),
		// Requests whose echo made a reply over MaxLine.
		factory.Encode(999999, strings.Repeat("Z", factory.MaxLine-17)),
		[]byte("999999 " + strings.Repeat("z", factory.MaxLine-7)),
		factory.Encode(999999, "READ", strings.Repeat("9", factory.MaxLine-22)),
		[]byte(strings.Repeat("9", 200) + " HELLO"),
		// Version 2 (docs/factory-protocol.md, section 12).
		factory.Encode(18, "HELLO", "2"), []byte("19 hello 2"), factory.Encode(20, "READ", "162"),
		factory.Encode(21, "INSTALL", "DATA", "162", strings.Repeat("QUJD", 54)), factory.Encode(22, "CHAIN", "READ", "162"),
		factory.Encode(23, "HELLO", "2", "2"),
		// A v2 BEGIN repeated for the open upload, and a COMMIT after it.
		factory.Encode(24, "INSTALL", "BEGIN", "10", strings.Repeat("0", 64)), factory.Encode(25, "INSTALL", "COMMIT"),
	} {
		f.Add(bytes.TrimSpace(s))
	}
	f.Fuzz(func(t *testing.T, line []byte) { checkHandled(t, d, line) })
}

// checkHandled hands line to d as the line reader would, and checks the
// reply: at most MaxLine bytes, a valid OK or NAK frame with a CRC, and
// the request's sequence number.
func checkHandled(t *testing.T, d *factory.Device, line []byte) {
	if len(line) > factory.MaxLine || bytes.ContainsAny(line, "\r\n") {
		return // the line reader never hands these to Handle
	}
	resp := d.Handle(line)
	if resp == nil {
		return
	}
	if len(resp)-1 > factory.MaxLine {
		t.Fatalf("reply to %q is %d bytes, over MaxLine: %q", line, len(resp)-1, resp)
	}
	fr, err := factory.ParseFrame(bytes.TrimSuffix(resp, []byte("\n")))
	if err != nil || !fr.CRC || (fr.Verb != "OK" && fr.Verb != "NAK") {
		t.Fatalf("reply to %q is not a valid frame: %q (%v)", line, resp, err)
	}
	if req, err := factory.ParseFrame(line); err == nil && req.Seq != fr.Seq {
		t.Fatalf("reply seq %d to request seq %d", fr.Seq, req.Seq)
	}
}
