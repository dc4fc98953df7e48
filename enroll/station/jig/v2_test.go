package jig_test

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"devid/enroll/certstore"
	"devid/enroll/factory"
	"devid/enroll/station"
	"devid/enroll/station/jig"
	"devid/hal/serial"
	"devid/hal/serial/serialtest"
)

func TestV2ProgramsAndIsSmallerThanV1(t *testing.T) {
	t.Parallel()
	l := newCA(t)
	run := func(id string, v1Only bool) (*jig.Result, *jig.Jig, *device) {
		link := serialtest.NewLink(t)
		d := startDevice(t, link.DeviceTTY, id, rootPool(l))
		p, err := serial.Open(link.JigTTY, 115200)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { p.Close() })
		j := jig.New(p)
		j.V1Only = v1Only
		var hello string
		res, err := jig.ProgramWith(testCtx(t), j, l, jig.Options{Roots: rootPool(l)}, func(s jig.Step, msg string) {
			if s == jig.StepHello {
				hello = msg
			}
		})
		if err != nil {
			t.Fatalf("%s: %v", id, err)
		}
		if want := map[bool]string{true: "protocol 1", false: "protocol 2"}[v1Only]; !strings.Contains(hello, want) {
			t.Errorf("%s: hello step %q, want %q", id, hello, want)
		}
		if j.V2() == v1Only {
			t.Errorf("%s: V2() = %v with V1Only %v", id, j.V2(), v1Only)
		}
		if checkState(t, d) != factory.StateProgrammed {
			t.Fatalf("%s: device not programmed", id)
		}
		// The device stores PEM whatever travelled: the chain file is
		// exactly what the jig issued.
		chain, err := d.Certs.Load()
		if err != nil || !bytes.Equal(chain.PEM, res.ChainPEM) {
			t.Fatalf("%s: stored chain differs from the issued one (%v)", id, err)
		}
		return res, j, d
	}
	v1, _, _ := run("board-v1", true)
	v2, j2, _ := run("board-v2", false)
	w1, w2 := v1.BytesSent+v1.BytesReceived, v2.BytesSent+v2.BytesReceived
	t.Logf("wire bytes: v1 %d, v2 %d (%.0f%% less)", w1, w2, 100*(1-float64(w2)/float64(w1)))
	if float64(w2) > 0.75*float64(w1) {
		t.Errorf("v2 moves %d bytes, v1 %d: want at least 25%% less", w2, w1)
	}

	// A second v2 run on the programmed board reads the chain back as
	// DER (CHAIN in v2), finds it valid and leaves the board alone.
	res, err := jig.ProgramWith(testCtx(t), j2, l, jig.Options{Roots: rootPool(l)}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if !res.AlreadyProgrammed || res.Serial != v2.Serial || !bytes.Equal(res.ChainPEM, v2.ChainPEM) {
		t.Fatalf("second v2 run: already %v serial %s (want %s)", res.AlreadyProgrammed, res.Serial, v2.Serial)
	}
}

func TestV2JigFallsBackToV1Device(t *testing.T) {
	t.Parallel()
	l := newCA(t)
	link := serialtest.NewLink(t)
	var sawHello2 bool
	link.SetTamper(func(dir serialtest.Direction, _ int, b []byte) []byte {
		if dir == serialtest.ToDevice && bytes.Contains(b, []byte(" HELLO 2 ")) {
			sawHello2 = true
		}
		if dir == serialtest.ToJig && bytes.Contains(b, []byte(" v2=1")) {
			t.Errorf("a v1-only device offered v2: %q", b)
		}
		return b
	})
	startDeviceWith(t, link.DeviceTTY, "board-old", rootPool(l), func(d *device) { d.NoV2 = true })
	j := jigOn(t, link.JigTTY)
	res, err := jig.Program(testCtx(t), j, l, nil)
	if err != nil {
		t.Fatal(err)
	}
	if !sawHello2 || j.V2() || res.Serial == "" {
		t.Fatalf("asked for v2 %v, session v2 %v, serial %q", sawHello2, j.V2(), res.Serial)
	}
}

func TestV1JigSeesNoDifference(t *testing.T) {
	t.Parallel()
	l := newCA(t)
	pair := serialtest.Pty(t)
	startDevice(t, pair.TTY, "board-v1jig", rootPool(l))
	j := jig.New(pair.Master)
	j.V1Only = true
	h, err := j.Hello(testCtx(t))
	if err != nil {
		t.Fatal(err)
	}
	if h.Proto != 1 || h.Chunk != factory.Chunk || j.V2() {
		t.Fatalf("v1 HELLO on a v2 device: %+v", h)
	}
	if _, err := jig.Program(testCtx(t), j, l, nil); err != nil {
		t.Fatal(err)
	}
	// The chain reads back as PEM in v1, as before v2.
	b, err := j.Chain(testCtx(t))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := certstore.ParsePEM(b); err != nil {
		t.Fatalf("v1 CHAIN: %v", err)
	}
}

// TestV2WindowRecovers damages frames inside a window: a request flipped
// on its way (the device NAKs "-" and later chunks of the upload get NAK
// offset), a corrupt reply, a request whose high bit is set, and a reply
// lost outright (detected by the reply after it, without a timeout).
func TestV2WindowRecovers(t *testing.T) {
	t.Parallel()
	l := newCA(t)
	link := serialtest.NewLink(t)
	d := startDevice(t, link.DeviceTTY, "board-v2-tamper", rootPool(l))
	hits := map[string]bool{}
	link.SetTamper(func(dir serialtest.Direction, _ int, b []byte) []byte {
		flip := func(name, what string, at func(i int) int, bit byte) bool {
			i := bytes.Index(b, []byte(what))
			if i < 0 || hits[name] {
				return false
			}
			hits[name] = true
			b[at(i)] ^= bit
			return true
		}
		mid := func(i int) int { return i + 20 }
		switch {
		case dir == serialtest.ToJig && flip("csr-reply", " OK DATA 162 ", mid, 0x04):
		case dir == serialtest.ToDevice && flip("install-req", " INSTALL DATA 324 ", mid, 0x10):
		case dir == serialtest.ToDevice && flip("install-high", " INSTALL DATA 648 ", func(i int) int { return i + 3 }, 0x80):
		case dir == serialtest.ToJig && bytes.Contains(b, []byte(" OK have=810 ")) && !hits["drop"]:
			hits["drop"] = true
			// Drop only that reply's line; keep any other line in the read.
			var keep [][]byte
			for _, ln := range bytes.SplitAfter(b, []byte("\n")) {
				if !bytes.Contains(ln, []byte(" have=810 ")) {
					keep = append(keep, ln)
				}
			}
			return bytes.Join(keep, nil)
		}
		return b
	})
	j := jigOn(t, link.JigTTY)
	j.ReplyTimeout = time.Second
	res, err := jig.Program(testCtx(t), j, l, nil)
	if err != nil {
		t.Fatal(err)
	}
	for _, h := range []string{"csr-reply", "install-req", "install-high", "drop"} {
		if !hits[h] {
			t.Errorf("tamper %q never fired: the test did not exercise it", h)
		}
	}
	if !j.V2() || res.Serial == "" || checkState(t, d) != factory.StateProgrammed {
		t.Fatalf("v2 %v serial %q", j.V2(), res.Serial)
	}
}

// TestV2WindowGivesUpOnDeadBoard: a board that stops answering inside a
// window is given up after the retries, with ErrNoReply.
func TestV2WindowGivesUpOnDeadBoard(t *testing.T) {
	t.Parallel()
	l := newCA(t)
	link := serialtest.NewLink(t)
	startDevice(t, link.DeviceTTY, "board-v2-dead", rootPool(l))
	link.SetTamper(func(dir serialtest.Direction, _ int, b []byte) []byte {
		if dir == serialtest.ToJig && bytes.Contains(b, []byte(" OK INSTALL BEGIN ")) {
			link.SetTamper(func(serialtest.Direction, int, []byte) []byte { return nil }) // the board dies
		}
		return b
	})
	j := jigOn(t, link.JigTTY)
	j.ReplyTimeout, j.Retries = 100*time.Millisecond, 2
	_, err := jig.Program(testCtx(t), j, l, nil)
	var se *jig.StepError
	if err == nil || !errors.As(err, &se) || se.Step != jig.StepInstall || !strings.Contains(err.Error(), jig.ErrNoReply.Error()) {
		t.Fatalf("dead board: %v", err)
	}
}

// TestV2AttestRetransmissions: attestation over v2 (windowed ATTEST READ
// and ACTIVATE DATA) with damaged frames in the windows.
func TestV2AttestRetransmissions(t *testing.T) {
	t.Parallel()
	l := attestCA(t)
	link := serialtest.NewLink(t)
	_, tpm := startTPMDevice(t, link.DeviceTTY, "board-v2-att", l, nil)
	hits := map[string]bool{}
	link.SetTamper(func(dir serialtest.Direction, _ int, b []byte) []byte {
		switch {
		case dir == serialtest.ToDevice && bytes.Contains(b, []byte(" ATTEST READ 162 ")) && !hits["read-flip"]:
			hits["read-flip"] = true
			b[bytes.Index(b, []byte(" ATTEST READ 162 "))+5] ^= 0x04
		case dir == serialtest.ToJig && bytes.Contains(b, []byte(" OK ATTEST DATA 324 ")) && !hits["data-flip"]:
			hits["data-flip"] = true
			b[bytes.Index(b, []byte(" OK ATTEST DATA 324 "))+30] ^= 0x01
		case dir == serialtest.ToDevice && bytes.Contains(b, []byte(" ACTIVATE DATA 162 ")) && !hits["act-flip"]:
			hits["act-flip"] = true
			b[bytes.Index(b, []byte(" ACTIVATE DATA 162 "))+25] ^= 0x10
		}
		return b
	})
	j := jigOn(t, link.JigTTY)
	j.ReplyTimeout = time.Second
	res, err := jig.ProgramWith(testCtx(t), j, l, attestOpts(), nil)
	if err != nil {
		t.Fatal(err)
	}
	for _, h := range []string{"read-flip", "data-flip", "act-flip"} {
		if !hits[h] {
			t.Errorf("tamper %q never fired", h)
		}
	}
	if !j.V2() || res.Attestation.Outcome != station.Attested || tpm.Attests.Load() != 1 || tpm.Activations.Load() != 1 {
		t.Fatalf("v2 %v outcome %q after %d attestations, %d activations", j.V2(), res.Attestation.Outcome, tpm.Attests.Load(), tpm.Activations.Load())
	}
}

// BenchmarkProgramV1VsV2 programs one fresh board per iteration with a v1
// jig and with a v2 jig, through a relay that throttles each way to
// 11,520 B/s (115200 baud 8N1, serialtest.Throttled). It reports per
// version the wire bytes of one board, its wire floor (those bytes, both
// directions added, at 11,520 B/s: as if the line carried one direction
// at a time, which v1's stop-and-wait does; v2's windows may overlap the
// two) and the measured time over that floor.
func BenchmarkProgramV1VsV2(b *testing.B) {
	for _, v := range []struct {
		name   string
		v1Only bool
	}{{"v1", true}, {"v2", false}} {
		b.Run(v.name, func(b *testing.B) {
			l := newCA(b)
			var wire int
			var total time.Duration
			for i := 0; b.Loop(); i++ {
				b.StopTimer()
				link := serialtest.NewLink(b)
				link.SetTamper(serialtest.Throttled(serialtest.UARTBytesPerSecond))
				startDevice(b, link.DeviceTTY, fmt.Sprintf("bench-%s-%d", v.name, i), rootPool(l))
				p, err := serial.Open(link.JigTTY, 115200)
				if err != nil {
					b.Fatal(err)
				}
				j := jig.New(p)
				j.V1Only = v.v1Only
				b.StartTimer()
				start := time.Now()
				res, err := jig.Program(context.Background(), j, l, nil)
				total += time.Since(start)
				b.StopTimer()
				p.Close()
				if err != nil {
					b.Fatal(err)
				}
				if j.V2() == v.v1Only {
					b.Fatalf("%s run with V2() %v", v.name, j.V2())
				}
				wire = res.BytesSent + res.BytesReceived
				b.StartTimer()
			}
			floor := float64(wire) / serialtest.UARTBytesPerSecond * 1000
			ms := float64(total.Milliseconds()) / float64(b.N)
			b.ReportMetric(float64(wire), "wire-bytes/op")
			b.ReportMetric(floor, "floor-ms/op")
			b.ReportMetric(ms/floor, "x-floor")
		})
	}
}

// TestV2HelloCSRWindowRecovers: the replies to HELLO 2 and to the CSR
// sent behind it are lost in turn; the jig resends and programs, and
// the device made one key.
func TestV2HelloCSRWindowRecovers(t *testing.T) {
	t.Parallel()
	l := newCA(t)
	link := serialtest.NewLink(t)
	d := startDevice(t, link.DeviceTTY, "board-v2-hello", rootPool(l))
	hits := map[string]bool{}
	drop := func(b []byte, name, what string) []byte {
		if hits[name] || !bytes.Contains(b, []byte(what)) {
			return b
		}
		hits[name] = true
		var keep [][]byte
		for _, ln := range bytes.SplitAfter(b, []byte("\n")) {
			if !bytes.Contains(ln, []byte(what)) {
				keep = append(keep, ln)
			}
		}
		return bytes.Join(keep, nil)
	}
	link.SetTamper(func(dir serialtest.Direction, _ int, b []byte) []byte {
		if dir != serialtest.ToJig {
			return b
		}
		b = drop(b, "hello", " OK HELLO proto=2 ")
		if hits["hello"] {
			b = drop(b, "csr", " OK CSR ")
		}
		return b
	})
	j := jigOn(t, link.JigTTY)
	j.ReplyTimeout = 300 * time.Millisecond
	first, err := jig.Program(testCtx(t), j, l, nil)
	if err != nil {
		t.Fatal(err)
	}
	if !hits["hello"] || !hits["csr"] || !j.V2() {
		t.Fatalf("tampers %v, v2 %v", hits, j.V2())
	}
	certs, err := certstore.ParsePEM(first.ChainPEM)
	if err != nil {
		t.Fatal(err)
	}
	key, err := d.Keys.Load()
	if err != nil || !key.Public().(*ecdsa.PublicKey).Equal(certs[0].PublicKey) {
		t.Fatalf("device key does not match the issued certificate: %v", err)
	}
}

// TestV2GapWithoutTimeout: an INSTALL DATA request is damaged and the
// device's "- NAK crc" for it is lost too, so the next chunk is answered
// NAK offset. The jig reads that as a gap (the reply before it is
// missing), resends the damaged chunk and the refused one at once, and
// finishes without waiting out a reply timeout (set far beyond the
// test's deadline).
func TestV2GapWithoutTimeout(t *testing.T) {
	t.Parallel()
	l := newCA(t)
	link := serialtest.NewLink(t)
	startDevice(t, link.DeviceTTY, "board-v2-gap", rootPool(l))
	hits := map[string]bool{}
	var mu sync.Mutex
	var pend []byte // a reply line cut by a read, held until it is whole
	link.SetTamper(func(dir serialtest.Direction, _ int, b []byte) []byte {
		mu.Lock()
		defer mu.Unlock()
		if dir == serialtest.ToDevice {
			if !hits["flip"] && bytes.Contains(b, []byte(" INSTALL DATA 324 ")) {
				hits["flip"] = true
				// Another base64 letter: the CRC fails, never the
				// character check (an XOR could make 'w' a DEL).
				at := bytes.Index(b, []byte(" INSTALL DATA 324 ")) + 30
				if b[at] == 'A' {
					b[at] = 'B'
				} else {
					b[at] = 'A'
				}
			}
			return b
		}
		// Replies are judged by whole lines: a read may cut one.
		data := append(pend, b...)
		cut := bytes.LastIndexByte(data, '\n') + 1
		pend = append([]byte(nil), data[cut:]...)
		var keep []byte
		for _, ln := range bytes.SplitAfter(data[:cut], []byte("\n")) {
			if hits["flip"] && !hits["nak-lost"] && bytes.HasPrefix(ln, []byte("- NAK crc")) {
				hits["nak-lost"] = true
				continue
			}
			if bytes.Contains(ln, []byte(" NAK offset ")) {
				hits["offset"] = true
			}
			keep = append(keep, ln...)
		}
		return keep
	})
	j := patientJig(t, link.JigTTY)
	ctx, cancel := context.WithTimeout(testCtx(t), 20*time.Second)
	defer cancel()
	if _, err := jig.Program(ctx, j, l, nil); err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	defer mu.Unlock()
	for _, h := range []string{"flip", "nak-lost", "offset"} {
		if !hits[h] {
			t.Errorf("tamper %q never fired", h)
		}
	}
}

// TestV2DamagedHelloResendsCSR: the first HELLO 2 is damaged, so the jig
// resends it and the CSR behind it, which the device then executes twice;
// the readout must still match what the accepted CSR reply announced.
func TestV2DamagedHelloResendsCSR(t *testing.T) {
	t.Parallel()
	l := newCA(t)
	link := serialtest.NewLink(t)
	startDevice(t, link.DeviceTTY, "board-v2-csr2", rootPool(l))
	csrs, flipped := 0, false
	link.SetTamper(func(dir serialtest.Direction, _ int, b []byte) []byte {
		if dir == serialtest.ToDevice {
			if i := bytes.Index(b, []byte(" HELLO 2 ")); i >= 0 && !flipped {
				flipped = true
				b[i+2] ^= 0x01
			}
			csrs += bytes.Count(b, []byte(" CSR *"))
		}
		return b
	})
	j := jigOn(t, link.JigTTY)
	if _, err := jig.Program(testCtx(t), j, l, nil); err != nil {
		t.Fatal(err)
	}
	if !flipped || csrs < 2 || !j.V2() {
		t.Fatalf("flipped %v, %d CSR frames sent, v2 %v", flipped, csrs, j.V2())
	}
}
