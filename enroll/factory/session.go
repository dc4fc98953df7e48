package factory

import (
	"context"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"devid/enroll/certstore"
	"devid/hal/serial"
)

// Advice is the one next step the device names for a state, in every NAK
// that the state causes (CSR, INSTALL COMMIT, ATTEST, CHAIN), so that a
// jig or an operator never reads two contradicting hints.
func Advice(st State) []string {
	switch st {
	case StateBlank:
		return []string{"send", "CSR", "first"}
	case StateKeyed:
		return []string{"send", "INSTALL", "first"}
	case StateInconsistent:
		return []string{"RESET", "first"}
	case StateError:
		return []string{"see", "STATUS", "detail"}
	}
	return nil
}

// stateNAK refuses a command because of the device's state: the reason,
// the state, and the state's Advice.
func (d *Device) stateNAK(reason string) []string {
	st, _, _ := d.state()
	return nak(reason, append([]string{"device", "is", string(st) + ";"}, Advice(st)...)...)
}

// handleBusy is handle for Serve: while the command runs longer than
// BusyInterval it sends "SEQ BUSY" frames, so that the jig waits for a
// working board and gives up quickly on a dead one. The error is a failed
// write of a BUSY frame.
func (d *Device) handleBusy(ctx context.Context, port serial.Port, line []byte) ([]byte, error) {
	every := d.BusyInterval
	if every <= 0 {
		every = DefaultBusyInterval
	}
	f, err := ParseFrame(line)
	if err != nil || f.Seq == NoSeq || isReply(f.Verb) {
		return d.handle(ctx, line), nil
	}
	stop, done := make(chan struct{}), make(chan error, 1)
	go func() {
		t := time.NewTicker(every)
		defer t.Stop()
		busy := Encode(f.Seq, "BUSY")
		for {
			select {
			case <-stop:
				done <- nil
				return
			case <-t.C:
				if _, err := port.Write(busy); err != nil {
					done <- err
					return
				}
			}
		}
	}()
	resp := d.handle(ctx, line)
	close(stop)
	return resp, <-done
}

// v2 reports whether this session speaks protocol 2 ("HELLO 2").
func (d *Device) v2() bool { return d.proto == ProtocolV2 }

// chunk is the most payload bytes one DATA frame carries in this session.
func (d *Device) chunk() int {
	if d.v2() {
		return ChunkV2
	}
	return Chunk
}

// dataAck answers an upload chunk (INSTALL or ACTIVATE DATA) with the
// bytes held: "OK VERB DATA have=N" in v1, the short "OK have=N" in v2,
// where it is the most frequent reply.
func (d *Device) dataAck(verb string, have int) []string {
	if d.v2() {
		return []string{"OK", "have=" + strconv.Itoa(have)}
	}
	return []string{"OK", verb, "DATA", "have=" + strconv.Itoa(have)}
}

// isReply reports whether verb is one the device sends (a looped-back
// reply must not be answered).
func isReply(verb string) bool { return verb == "OK" || verb == "NAK" || verb == "BUSY" }

// removeTemps removes the temp files that a power cut during INSTALL
// COMMIT (the chain) or key creation leaves beside their targets
// (hal/atomicfile names them ".NAME.tmp-*"). It runs when Serve starts
// and on RESET, when no write of this device is under way.
func (d *Device) removeTemps() {
	paths := []string{d.Certs.Path()}
	if p, ok := d.Keys.(interface{ Paths() []string }); ok {
		paths = append(paths, p.Paths()...)
	}
	for _, p := range paths {
		m, _ := filepath.Glob(filepath.Join(filepath.Dir(p), "."+filepath.Base(p)+".tmp-*"))
		for _, f := range m {
			if err := os.Remove(f); err == nil {
				d.log().Warn("removed a temp file left by an interrupted write", "file", f)
			}
		}
	}
}

// chainCmd is CHAIN (announce the installed chain) and CHAIN READ OFFSET.
func (d *Device) chainCmd(args []string) []string {
	switch {
	case len(args) == 0:
		chain, err := d.Certs.Load()
		if errors.Is(err, certstore.ErrNoChain) {
			return d.stateNAK(ReasonState)
		}
		if err != nil {
			return nak(ReasonInternal, Words(err.Error())...)
		}
		d.chainOut = chain.PEM
		if d.v2() {
			// v2: the certificates as DER, back to back, leaf first.
			d.chainOut = nil
			for _, c := range append([]*x509.Certificate{chain.Leaf}, chain.Intermediates...) {
				d.chainOut = append(d.chainOut, c.Raw...)
			}
		}
		sum := sha256.Sum256(d.chainOut)
		return []string{"OK", "CHAIN", "size=" + strconv.Itoa(len(d.chainOut)), "sha256=" + hex.EncodeToString(sum[:])}
	case len(args) == 2 && args[0] == "READ":
		return readChunk(d.chainOut, args[1], []string{"CHAIN", "DATA"}, "CHAIN", d.chunk())
	}
	return nak(ReasonArgs, "usage:", "CHAIN", "or", "CHAIN", "READ", "OFFSET")
}

// fitStatus shortens a STATUS reply that would not fit MaxLine with the
// longest sequence number: first the detail value is cut (ending in
// "..."), then dropped, then the id (HELLO always carries it). A 128-byte
// device ID with a 20-byte serial and a detail is the case that needs it.
func fitStatus(out []string) []string {
	fits := func(a []string) bool { return len(Encode(MaxSeq, a[0], a[1:]...))-1 <= MaxLine }
	if fits(out) {
		return out
	}
	last := len(out) - 1
	if v, ok := strings.CutPrefix(out[last], "detail="); ok {
		over := len(Encode(MaxSeq, out[0], out[1:]...)) - 1 - MaxLine
		if keep := len(v) - over - len("..."); keep > 0 {
			out[last] = "detail=" + sanitize(v)[:keep] + "..."
			if fits(out) {
				return out
			}
		}
		out = out[:last]
		if fits(out) {
			return out
		}
	}
	for i, a := range out {
		if strings.HasPrefix(a, "id=") {
			out = append(out[:i:i], out[i+1:]...)
			break
		}
	}
	return out
}
