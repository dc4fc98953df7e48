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
	"devid/hal/serial/serialtest"
)

var updateDoc = flag.Bool("update-doc", false, "regenerate the example transcript in docs/factory-protocol.md")

const docPath = "../../../docs/factory-protocol.md"

// TestDocTranscript keeps the examples in docs/factory-protocol.md true:
// every frame in them must parse with a correct CRC, and every reply must
// carry its request's sequence number. With -update-doc it records fresh
// programming runs over a pty and writes them into the doc: a software-key
// board (transcript), a board that attests with the test fake
// (attest-transcript), and the second run on a programmed board, which
// reads the chain back and leaves the board alone (programmed-transcript);
// these three with a v1 jig. v2-transcript is the first with a v2 jig
// (HELLO 2, DER, a window of requests in flight): there a reply answers
// one of the requests sent before it, not always the last.
func TestDocTranscript(t *testing.T) {
	for _, tc := range []struct {
		name string
		min  int
	}{{"transcript", 20}, {"attest-transcript", 30}, {"programmed-transcript", 16}, {"v2-transcript", 16}} {
		t.Run(tc.name, func(t *testing.T) { checkTranscript(t, tc.name, tc.min) })
	}
}

func checkTranscript(t *testing.T, name string, minFrames int) {
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
		body = "\n```text\n" + record(t, name) + "```\n"
		if err := os.WriteFile(docPath, []byte(before+beginMark+body+endMark+after), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	n, lastSeq := 0, -2
	sent := map[int]bool{}
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
		switch {
		case dir == ">":
			lastSeq = f.Seq
			sent[f.Seq] = true
		case name == "v2-transcript" && !sent[f.Seq]:
			t.Errorf("doc reply %q answers no request sent before it", frame)
		case name != "v2-transcript" && f.Seq != lastSeq:
			t.Errorf("doc reply %q does not answer seq %d", frame, lastSeq)
		}
		n++
	}
	if n < minFrames {
		t.Errorf("doc %s has only %d frames", name, n)
	}
}

// record programs a device over a link and returns the traffic, one frame
// per line: "> " jig to device, "< " device to jig. For
// attest-transcript the device has the fake TPM and the jig its verifier;
// for programmed-transcript the board is programmed first, unrecorded,
// and the jig runs again with the CA's roots; v2-transcript is a
// software-key board programmed by a v2 jig.
func record(t *testing.T, name string) string {
	l := attestCA(t)
	link := serialtest.NewLink(t)
	o := jig.Options{}
	switch name {
	case "attest-transcript":
		startTPMDevice(t, link.DeviceTTY, "board-0002", l, nil)
		o = attestOpts()
	case "programmed-transcript":
		startDevice(t, link.DeviceTTY, "board-0003", rootPool(l))
		o.Roots = rootPool(l)
	case "v2-transcript":
		startDevice(t, link.DeviceTTY, "board-0004", rootPool(l))
	default:
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
	j := jigOn(t, link.JigTTY)
	j.V1Only = name != "v2-transcript"
	if name == "programmed-transcript" {
		if _, err := jig.ProgramWith(testCtx(t), j, l, o, nil); err != nil {
			t.Fatal(err)
		}
		mu.Lock()
		out.Reset()
		mu.Unlock()
	}
	j.SetSeq(0)
	res, err := jig.ProgramWith(testCtx(t), j, l, o, nil)
	if err != nil {
		t.Fatal(err)
	}
	if name == "programmed-transcript" && !res.AlreadyProgrammed {
		t.Fatal("the second run did not leave the board alone")
	}
	mu.Lock()
	defer mu.Unlock()
	return out.String()
}
