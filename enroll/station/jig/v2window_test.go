package jig_test

import (
	"bytes"
	"context"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"devid/enroll/factory"
	"devid/enroll/station/jig"
	"devid/hal/serial/serialtest"
)

// byLines is a Tamper that hands f whole lines (with their LF), each
// direction on its own: a read of the relay may cut a line, and the part
// is held until the line is whole. A lone LF (before a re-sent request)
// is passed as a line too. f returns what to send instead (nil: drop).
func byLines(f func(dir serialtest.Direction, line []byte) []byte) serialtest.Tamper {
	// One lock per direction: f may block one direction (waiting for the
	// other) while the other goes on.
	var mu [2]sync.Mutex
	var pend [2][]byte
	return func(dir serialtest.Direction, _ int, b []byte) []byte {
		mu[dir].Lock()
		defer mu[dir].Unlock()
		data := append(pend[dir], b...)
		cut := bytes.LastIndexByte(data, '\n') + 1
		pend[dir] = append([]byte(nil), data[cut:]...)
		var out []byte
		for _, ln := range bytes.SplitAfter(data[:cut], []byte("\n")) {
			if len(ln) > 0 {
				out = append(out, f(dir, ln)...)
			}
		}
		return out
	}
}

// TestV2PipelinesWindows: a v2 jig sends READ 0 before the CSR reply
// reaches it, the first INSTALL DATA before the INSTALL BEGIN reply, and
// COMMIT before the reply to the last chunk. The relay holds each of
// those replies until the request that must not wait for it has passed;
// a jig that waited would never get the reply, and the test would fail
// at its deadline.
func TestV2PipelinesWindows(t *testing.T) {
	t.Parallel()
	l := newCA(t)
	link := serialtest.NewLink(t)
	d := startDevice(t, link.DeviceTTY, "board-v2-pipe", rootPool(l))
	ctx, cancel := context.WithTimeout(testCtx(t), 20*time.Second)
	defer cancel()
	var mu sync.Mutex
	seen := map[string]chan struct{}{"READ 0": make(chan struct{}), "INSTALL DATA 0": make(chan struct{}), "INSTALL COMMIT": make(chan struct{})}
	size := ""
	beginRE := regexp.MustCompile(`^\d+ INSTALL BEGIN (\d+) `)
	// The last chunk's requests (every copy): only their reply is held.
	// A re-sent earlier chunk is also answered "have=<size>" once all
	// bytes are in, and holding that reply would hold the window's base.
	dataRE := regexp.MustCompile(`^(\d+) INSTALL DATA (\d+) `)
	lastOff, lastSeqs := -1, map[string]bool{}
	replySeq := regexp.MustCompile(`^(\d+) `)
	wait := func(reply, req string) {
		select {
		case <-seen[req]:
		case <-ctx.Done():
			t.Errorf("the jig waited for %q before it sent %q", reply, req)
		}
	}
	link.SetTamper(byLines(func(dir serialtest.Direction, ln []byte) []byte {
		if dir == serialtest.ToDevice {
			mu.Lock()
			defer mu.Unlock()
			if m := beginRE.FindSubmatch(ln); m != nil {
				size = string(m[1])
			}
			if m := dataRE.FindSubmatch(ln); m != nil {
				off, _ := strconv.Atoi(string(m[2]))
				if off > lastOff {
					lastOff, lastSeqs = off, map[string]bool{}
				}
				if off == lastOff {
					lastSeqs[string(m[1])] = true
				}
			}
			for req, ch := range seen {
				if bytes.Contains(ln, []byte(" "+req+" ")) {
					select {
					case <-ch:
					default:
						close(ch)
					}
				}
			}
			return ln
		}
		mu.Lock()
		last := " OK have=" + size + " "
		isLast := false
		if m := replySeq.FindSubmatch(ln); m != nil {
			isLast = lastSeqs[string(m[1])]
		}
		mu.Unlock()
		switch {
		case bytes.Contains(ln, []byte(" OK CSR ")):
			wait("OK CSR", "READ 0")
		case bytes.Contains(ln, []byte(" OK INSTALL BEGIN ")):
			wait("OK INSTALL BEGIN", "INSTALL DATA 0")
		case size != "" && isLast && bytes.Contains(ln, []byte(last)):
			wait("OK have="+size, "INSTALL COMMIT")
		}
		return ln
	}))
	j := jigOn(t, link.JigTTY)
	res, err := jig.Program(ctx, j, l, nil)
	if err != nil {
		t.Fatal(err)
	}
	if !j.V2() || checkState(t, d) != factory.StateProgrammed {
		t.Fatalf("v2 %v", j.V2())
	}
	checkStoredChain(t, d, res.ChainPEM)
}

// TestV2BeginReplyLost: the reply to INSTALL BEGIN is lost. The replies
// to the DATA requests behind it do not count (BEGIN is a barrier); the
// jig resends BEGIN and those requests at once, the device keeps the
// upload, and the run ends without waiting out a reply timeout.
func TestV2BeginReplyLost(t *testing.T) {
	t.Parallel()
	l := newCA(t)
	link := serialtest.NewLink(t)
	d := startDevice(t, link.DeviceTTY, "board-v2-begin", rootPool(l))
	var mu sync.Mutex
	dropped, begins := false, 0
	link.SetTamper(byLines(func(dir serialtest.Direction, ln []byte) []byte {
		mu.Lock()
		defer mu.Unlock()
		switch {
		case dir == serialtest.ToDevice && bytes.Contains(ln, []byte(" INSTALL BEGIN ")):
			begins++
		case dir == serialtest.ToJig && !dropped && bytes.Contains(ln, []byte(" OK INSTALL BEGIN ")):
			dropped = true
			return nil
		}
		return ln
	}))
	j := patientJig(t, link.JigTTY)
	ctx, cancel := context.WithTimeout(testCtx(t), 20*time.Second)
	defer cancel()
	res, err := jig.Program(ctx, j, l, nil)
	if err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	defer mu.Unlock()
	if !dropped || begins < 2 {
		t.Fatalf("reply dropped %v, %d BEGIN frames sent", dropped, begins)
	}
	checkStoredChain(t, d, res.ChainPEM)
}

// TestV2BeginDamaged: INSTALL BEGIN is damaged on its way, so the DATA
// requests sent behind it reach a device with no upload open and are
// answered NAK state. Those NAKs are caused by the unanswered BEGIN: the
// jig resends BEGIN and the DATA requests after it and programs the
// board, without a reply timeout.
func TestV2BeginDamaged(t *testing.T) {
	t.Parallel()
	l := newCA(t)
	link := serialtest.NewLink(t)
	startDevice(t, link.DeviceTTY, "board-v2-begin-crc", rootPool(l))
	var mu sync.Mutex
	hits := map[string]bool{}
	link.SetTamper(byLines(func(dir serialtest.Direction, ln []byte) []byte {
		mu.Lock()
		defer mu.Unlock()
		switch {
		case dir == serialtest.ToDevice && !hits["damaged"] && bytes.Contains(ln, []byte(" INSTALL BEGIN ")):
			hits["damaged"] = true
			// Another hex digit in the SHA-256: the CRC fails.
			at := bytes.Index(ln, []byte(" INSTALL BEGIN ")) + 25
			ln = append([]byte(nil), ln...)
			if ln[at] == 'a' {
				ln[at] = 'b'
			} else {
				ln[at] = 'a'
			}
		case dir == serialtest.ToJig && bytes.Contains(ln, []byte(" NAK state ")):
			hits["nak-state"] = true
		}
		return ln
	}))
	j := patientJig(t, link.JigTTY)
	ctx, cancel := context.WithTimeout(testCtx(t), 20*time.Second)
	defer cancel()
	if _, err := jig.Program(ctx, j, l, nil); err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	defer mu.Unlock()
	for _, h := range []string{"damaged", "nak-state"} {
		if !hits[h] {
			t.Errorf("%q never happened", h)
		}
	}
}

// TestV2BeginLostOnOpenUpload: the device holds an open upload from
// earlier in the session, and the run's INSTALL BEGIN is lost on its way.
// The first DATA requests are then appended to the old upload and
// answered OK; BEGIN being a barrier, those replies do not count, and the
// requests are resent after BEGIN, so the board is programmed.
func TestV2BeginLostOnOpenUpload(t *testing.T) {
	t.Parallel()
	l := newCA(t)
	link := serialtest.NewLink(t)
	d := startDevice(t, link.DeviceTTY, "board-v2-old-upload", rootPool(l))
	j := patientJig(t, link.JigTTY)
	ctx, cancel := context.WithTimeout(testCtx(t), 20*time.Second)
	defer cancel()
	if _, err := j.Hello(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := j.Do(ctx, false, "INSTALL", "BEGIN", strconv.Itoa(factory.MaxPayload), strings.Repeat("ab", 32)); err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	dropped := false
	link.SetTamper(byLines(func(dir serialtest.Direction, ln []byte) []byte {
		mu.Lock()
		defer mu.Unlock()
		if dir == serialtest.ToDevice && !dropped && bytes.Contains(ln, []byte(" INSTALL BEGIN ")) {
			dropped = true
			return nil
		}
		return ln
	}))
	res, err := jig.Program(ctx, j, l, nil)
	if err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	defer mu.Unlock()
	if !dropped {
		t.Fatal("BEGIN was never dropped")
	}
	checkStoredChain(t, d, res.ChainPEM)
}

// patientJig is a jig whose reply timeout is out of the test's reach: a
// run that would need to wait one out fails at the test's deadline.
func patientJig(t testing.TB, tty string) *jig.Jig {
	t.Helper()
	j := jigOn(t, tty)
	j.ReplyTimeout = 5 * time.Minute
	return j
}

// checkStoredChain: the device stores exactly the chain the jig issued
// (PEM, whatever travelled).
func checkStoredChain(t testing.TB, d *device, issued []byte) {
	t.Helper()
	if chain, err := d.Certs.Load(); err != nil || !bytes.Equal(chain.PEM, issued) {
		t.Fatalf("stored chain differs from the issued one (%v)", err)
	}
}
