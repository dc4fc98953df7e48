package jig_test

import (
	"bytes"
	"flag"
	"os"
	"strings"
	"sync"
	"testing"

	"devid/enroll/factory"
	"devid/enroll/station/jig"
	"devid/hal/serial"
	"devid/hal/serial/serialtest"
)

var updateDoc = flag.Bool("update-doc", false, "regenerate the example transcript in docs/factory-protocol.md")

const docPath = "../../../docs/factory-protocol.md"

// TestDocTranscript keeps the examples in docs/factory-protocol.md true:
// every frame in them must parse with a correct CRC, and every reply must
// carry its request's sequence number. With -update-doc it records fresh
// programming runs over a pty and writes them into the doc: a software-key
// board (transcript), and a board that attests with the test fake
// (attest-transcript).
func TestDocTranscript(t *testing.T) {
	for _, tc := range []struct {
		name   string
		attest bool
		min    int
	}{{"transcript", false, 20}, {"attest-transcript", true, 30}} {
		t.Run(tc.name, func(t *testing.T) { checkTranscript(t, tc.name, tc.attest, tc.min) })
	}
}

func checkTranscript(t *testing.T, name string, attest bool, minFrames int) {
	beginMark, endMark := "<!-- "+name+":begin -->", "<!-- "+name+":end -->"
	doc, err := os.ReadFile(docPath)
	if err != nil {
		t.Skipf("no protocol doc: %v", err)
	}
	before, rest, ok1 := strings.Cut(string(doc), beginMark)
	body, after, ok2 := strings.Cut(rest, endMark)
	if !ok1 || !ok2 {
		t.Fatalf("%s lacks the %s markers", docPath, name)
	}
	if *updateDoc {
		body = "\n```text\n" + record(t, attest) + "```\n"
		if err := os.WriteFile(docPath, []byte(before+beginMark+body+endMark+after), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	n, lastSeq := 0, -2
	for _, l := range strings.Split(body, "\n") {
		dir, frame, ok := strings.Cut(l, " ")
		if !ok || (dir != ">" && dir != "<") {
			continue
		}
		f, err := factory.ParseFrame([]byte(frame))
		if err != nil || !f.CRC {
			t.Errorf("doc frame %q: %v", frame, err)
			continue
		}
		if dir == ">" {
			lastSeq = f.Seq
		} else if f.Seq != lastSeq {
			t.Errorf("doc reply %q does not answer seq %d", frame, lastSeq)
		}
		n++
	}
	if n < minFrames {
		t.Errorf("doc %s has only %d frames", name, n)
	}
}

// record programs a device over a link and returns the traffic, one frame
// per line: "> " jig to device, "< " device to jig. With attest the
// device has the fake TPM and the jig its verifier.
func record(t *testing.T, attest bool) string {
	l := attestCA(t)
	link := serialtest.NewLink(t)
	o := jig.Options{}
	if attest {
		startTPMDevice(t, link.DeviceTTY, "board-0002", l, nil)
		o = attestOpts()
	} else {
		startDevice(t, link.DeviceTTY, "board-0001", rootPool(l))
	}
	var mu sync.Mutex
	var out strings.Builder
	var partial [2][]byte
	link.SetTamper(func(dir serialtest.Direction, _ int, b []byte) []byte {
		mu.Lock()
		defer mu.Unlock()
		partial[dir] = append(partial[dir], b...)
		for {
			i := bytes.IndexByte(partial[dir], '\n')
			if i < 0 {
				break
			}
			arrow := "> "
			if dir == serialtest.ToJig {
				arrow = "< "
			}
			out.WriteString(arrow + string(partial[dir][:i]) + "\n")
			partial[dir] = partial[dir][i+1:]
		}
		return b
	})
	p, err := serial.Open(link.JigTTY, 115200)
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	j := jig.New(p)
	j.SetSeq(0)
	if _, err := jig.ProgramWith(testCtx(t), j, l, o, nil); err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	defer mu.Unlock()
	return out.String()
}
