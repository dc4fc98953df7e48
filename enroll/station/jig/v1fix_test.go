package jig_test

import (
	"bytes"
	"errors"
	"sync"
	"testing"
	"time"

	"devid/enroll/factory"
	"devid/enroll/keys"
	"devid/enroll/station/jig"
	"devid/hal/serial/serialtest"
)

// TestDeadBoardGivenUpWithin10s: a board that never answers (it died at
// CSR or COMMIT) costs the jig at most 10 s with the default timeouts,
// for a quick command and for a slow one alike.
func TestDeadBoardGivenUpWithin10s(t *testing.T) {
	t.Parallel()
	if budget := jig.DefaultReplyTimeout * (jig.DefaultRetries + 1); budget > 10*time.Second {
		t.Fatalf("default budget for a dead board is %v, over 10 s", budget)
	}
	for _, tc := range []struct {
		verb string
		slow bool
	}{{"HELLO", false}, {"CSR", true}, {"INSTALL", true}} {
		t.Run(tc.verb, func(t *testing.T) {
			t.Parallel()
			pair := serialtest.Pty(t) // nothing serves the tty end
			j := jig.New(pair.Master)
			start := time.Now()
			_, err := j.Do(testCtx(t), tc.slow, tc.verb, "COMMIT")
			// The 10 s budget is checked above; the bound here leaves
			// a loaded machine slack, and still fails a wait of minutes.
			if took := time.Since(start); !errors.Is(err, jig.ErrNoReply) || took > 30*time.Second {
				t.Fatalf("%s to a dead board: %v after %v, want ErrNoReply within the 10 s budget", tc.verb, err, took)
			}
		})
	}
}

// slowKeys makes the key only once release is closed, as a discrete TPM
// may take seconds to make one.
type slowKeys struct {
	keys.Store
	release <-chan struct{}
}

func (s slowKeys) Create() (keys.Key, error) {
	<-s.release
	return s.Store.Create()
}

// TestBusyBoardIsWaitedFor: a board whose key takes longer than the
// jig's whole budget without BUSY frames (two attempts of 500 ms) says
// BUSY and is programmed. The key is released only after the jig has
// been sent 30 BUSY frames (every 50 ms, so at least 1.5 s): the test
// waits on the frames, not on a timer.
func TestBusyBoardIsWaitedFor(t *testing.T) {
	t.Parallel()
	l := newCA(t)
	link := serialtest.NewLink(t)
	release := make(chan struct{})
	var once sync.Once
	var mu sync.Mutex
	busy := 0
	link.SetTamper(func(dir serialtest.Direction, _ int, b []byte) []byte {
		if dir == serialtest.ToJig {
			mu.Lock()
			busy += bytes.Count(b, []byte(" BUSY"))
			if busy >= 30 {
				once.Do(func() { close(release) })
			}
			mu.Unlock()
		}
		return b
	})
	const reply = 500 * time.Millisecond
	startDeviceWith(t, link.DeviceTTY, "board-busy", rootPool(l), func(d *device) {
		d.Keys = slowKeys{d.Keys, release}
		d.BusyInterval = reply / 10
	})
	// Runs before the device's cleanup: a failed test never leaves the
	// device blocked in Create.
	t.Cleanup(func() { once.Do(func() { close(release) }) })
	j := jigOn(t, link.JigTTY)
	j.ReplyTimeout, j.Retries = reply, 1
	if _, err := jig.Program(testCtx(t), j, l, nil); err != nil {
		t.Fatalf("a busy board: %v", err)
	}
	mu.Lock()
	defer mu.Unlock()
	if busy < 30 {
		t.Errorf("programmed after %d BUSY frames, before the key was released", busy)
	}
}

// TestChainReadOverPty: the jig reads back exactly the chain it installed.
func TestChainReadOverPty(t *testing.T) {
	t.Parallel()
	l := newCA(t)
	pair := serialtest.Pty(t)
	startDevice(t, pair.TTY, "board-chain", rootPool(l))
	ctx := testCtx(t)
	j := jig.New(pair.Master)
	if _, err := j.Chain(ctx); !isNAK(err, factory.ReasonState) {
		t.Fatalf("CHAIN on a blank board: %v, want NAK state", err)
	}
	res, err := jig.Program(ctx, j, l, nil)
	if err != nil {
		t.Fatal(err)
	}
	got, err := j.Chain(ctx)
	if err != nil || !bytes.Equal(got, res.ChainPEM) {
		t.Fatalf("CHAIN: %v, %d bytes, want the %d installed", err, len(got), len(res.ChainPEM))
	}
}

// TestProgrammedBoardLeftAloneAndReissue: a board with a valid
// certificate from this CA is left alone (no second certificate in the
// ledger); --reissue gives it a new one and revokes the old serial; a
// revoked certificate is not "valid" and is replaced.
func TestProgrammedBoardLeftAloneAndReissue(t *testing.T) {
	t.Parallel()
	l := newCA(t)
	pair := serialtest.Pty(t)
	d := startDevice(t, pair.TTY, "board-again", rootPool(l))
	ctx := testCtx(t)
	j := jig.New(pair.Master)
	opts := jig.Options{Roots: rootPool(l)}
	first, err := jig.ProgramWith(ctx, j, l, opts, nil)
	if err != nil || first.AlreadyProgrammed {
		t.Fatalf("first run: %+v %v", first, err)
	}
	issued := func() int {
		t.Helper()
		recs, err := l.Issued("board-again")
		if err != nil {
			t.Fatal(err)
		}
		return len(recs)
	}
	again, err := jig.ProgramWith(ctx, j, l, opts, nil)
	if err != nil || !again.AlreadyProgrammed || again.Serial != first.Serial || issued() != 1 {
		t.Fatalf("second run: %+v %v, %d issued; want left alone with serial %s", again, err, issued(), first.Serial)
	}

	// --reissue: a new certificate, the old serial revoked, the new one not.
	if _, err := jig.ProgramWith(ctx, j, &issuerOnly{l}, jig.Options{Roots: rootPool(l), Reissue: true}, nil); err == nil {
		t.Fatal("reissue through an issuer that cannot revoke")
	}
	var steps []jig.Step
	re, err := jig.ProgramWith(ctx, j, l, jig.Options{Roots: rootPool(l), Reissue: true}, func(s jig.Step, _ string) { steps = append(steps, s) })
	if err != nil || re.AlreadyProgrammed || re.Serial == first.Serial || re.Replaced != first.Serial || steps[len(steps)-1] != jig.StepRevoke {
		t.Fatalf("reissue: %+v %v, steps %v", re, err, steps)
	}
	if rev, err := l.SerialRevoked(first.Serial); err != nil || !rev {
		t.Fatalf("old serial revoked: %v %v", rev, err)
	}
	if rev, err := l.SerialRevoked(re.Serial); err != nil || rev {
		t.Fatalf("new serial revoked: %v %v", rev, err)
	}
	if c, _ := d.Certs.Load(); c == nil || c.Serial() != re.Serial {
		t.Fatal("the board does not hold the reissued certificate")
	}

	// A revoked certificate on the board is replaced.
	if err := l.RevokeSerial(re.Serial, "key-compromise"); err != nil {
		t.Fatal(err)
	}
	fresh, err := jig.ProgramWith(ctx, j, l, opts, nil)
	if err != nil || fresh.AlreadyProgrammed || fresh.Serial == re.Serial {
		t.Fatalf("board with a revoked certificate: %+v %v", fresh, err)
	}

	// A chain from another CA is not this CA's: the board is programmed.
	other := newCA(t)
	both := rootPool(l)
	both.AddCert(other.Root())
	otherPair := serialtest.Pty(t)
	startDevice(t, otherPair.TTY, "board-other", both)
	oj := jig.New(otherPair.Master)
	if _, err := jig.Program(ctx, oj, other, nil); err != nil {
		t.Fatal(err)
	}
	if res, err := jig.ProgramWith(ctx, oj, l, jig.Options{Roots: rootPool(l)}, nil); err != nil || res.AlreadyProgrammed {
		t.Fatalf("board with another CA's certificate: %+v %v", res, err)
	}
}

// issuerOnly hides the CA's revocation methods.
type issuerOnly struct{ jig.Issuer }
