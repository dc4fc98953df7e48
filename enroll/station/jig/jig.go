package jig

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"math/big"
	"strconv"
	"strings"
	"time"

	"devid/enroll/certstore"
	"devid/enroll/factory"
	"devid/hal/serial"
)

// Jig defaults. A dead board is given up after (DefaultRetries+1) ×
// DefaultReplyTimeout = 9 s of silence, whatever the command; a board
// that answers "SEQ BUSY" is working and is waited for, up to
// DefaultSlowTimeout (docs/factory-protocol.md, section 7).
const (
	// DefaultReplyTimeout bounds the silence after a request (or after
	// the device's last BUSY frame for it) before the request is re-sent.
	DefaultReplyTimeout = 1500 * time.Millisecond
	// DefaultSlowTimeout bounds the whole wait for one reply while the
	// device keeps sending BUSY (key generation on a discrete TPM,
	// TPM attestation, disk syncs).
	DefaultSlowTimeout = 2 * time.Minute
	// DefaultRetries is how many times a request is re-sent after a
	// timeout, a corrupt reply or a frame-level NAK.
	DefaultRetries = 5
)

// ErrNoReply means the device did not answer a request after every retry.
var ErrNoReply = errors.New("no valid reply from device")

// NAKError is a device's refusal of a well-formed command; it is not
// retried.
type NAKError struct {
	Verb   string
	Reason string
	Detail string
}

func (e *NAKError) Error() string {
	return fmt.Sprintf("device refused %s: %s: %s", e.Verb, e.Reason, e.Detail)
}

// Reply is an OK response. Args are all words after "OK"; Fields are the
// key=value words among them (key: a lowercase letter, then [a-z0-9_]).
type Reply struct {
	Args   []string
	Fields map[string]string
}

func isFieldKey(k string) bool {
	for i, c := range k {
		if (c < 'a' || c > 'z') && (i == 0 || (c != '_' && (c < '0' || c > '9'))) {
			return false
		}
	}
	return k != ""
}

// Jig drives a device over a port. It is not safe for concurrent use.
type Jig struct {
	port serial.Port
	r    *factory.LineReader
	seq  int
	// ReplyTimeout, SlowTimeout and Retries default to the constants.
	// ReplyTimeout is the silence allowed per attempt; SlowTimeout caps
	// one attempt while the device sends BUSY.
	ReplyTimeout time.Duration
	SlowTimeout  time.Duration
	Retries      int
	// Sent and Received count bytes on the wire, for reports and benchmarks.
	Sent, Received int
	// V1Only keeps the jig to protocol 1 (a bare HELLO), as a jig from
	// before v2. By default Hello asks for v2 ("HELLO 2") and falls back
	// to 1 on a device that does not speak it.
	V1Only bool
	// Window is how many READ or DATA requests a v2 session keeps in
	// flight (DefaultWindow when zero; 1 is stop-and-wait).
	Window int

	proto int // protocol of the session Hello opened
	chunk int // the device's chunk size from HELLO
}

// maxChunk is the most payload bytes per DATA frame in this session.
func (j *Jig) maxChunk() int {
	if j.V2() {
		return factory.ChunkV2
	}
	return factory.Chunk
}

// V2 reports whether Hello opened a protocol 2 session.
func (j *Jig) V2() bool { return j.proto == factory.ProtocolV2 }

// New returns a jig on port. Its first sequence number is random, so a
// rerun after a crash never repeats the previous run's last request.
func New(port serial.Port) *Jig {
	n, _ := rand.Int(rand.Reader, big.NewInt(factory.MaxSeq))
	return &Jig{port: port, r: factory.NewLineReader(port), seq: int(n.Int64())}
}

// SetSeq makes the next request carry sequence number n+1 (for logs and
// documentation; New's random start is what production wants).
func (j *Jig) SetSeq(n int) { j.seq = n }

func (j *Jig) nextSeq() int {
	j.seq++
	if j.seq > factory.MaxSeq {
		j.seq = 1
	}
	return j.seq
}

// Do sends one request and waits for its reply, re-sending on timeouts,
// corrupt replies and frame-level NAKs. Each attempt waits ReplyTimeout
// for the reply; a "SEQ BUSY" frame from the device restarts that wait,
// up to SlowTimeout for the attempt. slow marks the commands that may
// keep a device busy (CSR, COMMITs, ATTEST, RESET TOKEN); BUSY frames
// extend the wait for them only.
func (j *Jig) Do(ctx context.Context, slow bool, verb string, args ...string) (*Reply, error) {
	timeout, retries := j.ReplyTimeout, j.Retries
	if timeout <= 0 {
		timeout = DefaultReplyTimeout
	}
	limit := time.Duration(0)
	if slow {
		limit = j.SlowTimeout
		if limit <= 0 {
			limit = DefaultSlowTimeout
		}
	}
	if retries <= 0 {
		retries = DefaultRetries
	}
	seq := j.nextSeq()
	req := factory.Encode(seq, verb, args...)
	var last error
	for attempt := 0; attempt <= retries; attempt++ {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		// A leading newline ends any half frame a killed run left behind.
		frame := req
		if attempt > 0 {
			frame = append([]byte("\n"), req...)
		}
		if _, err := j.port.Write(frame); err != nil {
			return nil, fmt.Errorf("%s: %w", verb, err)
		}
		j.Sent += len(frame)
		rep, err := j.await(ctx, seq, verb, timeout, limit)
		if err == nil {
			return rep, nil
		}
		var nk *NAKError
		if errors.As(err, &nk) || ctx.Err() != nil {
			return nil, err
		}
		last = err
	}
	return nil, fmt.Errorf("%s: %w after %d attempts: %v", verb, ErrNoReply, retries+1, last)
}

// await reads lines until the reply to seq, a frame-level NAK (retry), or
// timeout of silence; a BUSY for seq restarts the timeout, up to limit
// after the start (zero: BUSY is ignored). Replies to other sequence
// numbers are stale and skipped.
func (j *Jig) await(ctx context.Context, seq int, verb string, timeout, limit time.Duration) (*Reply, error) {
	start := time.Now()
	deadline := start.Add(timeout)
	for {
		line, err := j.r.Next(ctx, deadline, 0)
		if err != nil {
			if errors.Is(err, factory.ErrLineTooLong) {
				continue
			}
			return nil, err
		}
		j.Received += len(line) + 1
		f, err := factory.ParseFrame(line)
		if err != nil {
			return nil, fmt.Errorf("corrupt reply: %w", err)
		}
		switch {
		case !f.CRC:
			continue // not from a device
		case f.Verb == "NAK" && f.Seq == factory.NoSeq:
			if len(f.Args) > 0 && f.Args[0] == factory.ReasonTimeout {
				continue // the device dropped an older half frame, not ours
			}
			return nil, fmt.Errorf("device could not read the frame: %s", strings.Join(f.Args, " "))
		case f.Seq != seq:
			continue
		case f.Verb == "BUSY":
			if limit > 0 {
				deadline = time.Now().Add(timeout)
				if end := start.Add(limit); deadline.After(end) {
					deadline = end
				}
			}
			continue
		case f.Verb == "NAK":
			if len(f.Args) == 0 {
				return nil, fmt.Errorf("NAK without a reason")
			}
			switch f.Args[0] {
			case factory.ReasonCRC, factory.ReasonBadChar, factory.ReasonSyntax, factory.ReasonTooLong, factory.ReasonCRCMissing:
				return nil, fmt.Errorf("device could not read the frame: %s", strings.Join(f.Args, " "))
			}
			return nil, &NAKError{Verb: verb, Reason: f.Args[0], Detail: strings.Join(f.Args[1:], " ")}
		case f.Verb == "OK":
			rep := &Reply{Args: f.Args, Fields: map[string]string{}}
			for _, a := range f.Args {
				if k, v, ok := strings.Cut(a, "="); ok && isFieldKey(k) {
					rep.Fields[k] = v
				}
			}
			return rep, nil
		}
	}
}

// Hello is the device's answer to HELLO.
type Hello struct {
	Proto    int
	DeviceID string
	Key      string
	State    factory.State
	Chunk    int
	// Attest: the board offers TPM key attestation (attest=1).
	Attest bool
}

// Hello sends HELLO. A protocol version other than ours is an error.
func (j *Jig) Hello(ctx context.Context) (*Hello, error) {
	h, _, _, _, err := j.hello(ctx, false)
	return h, err
}

// HelloCSR is Hello then CSR. In v2 it sends "HELLO 2", CSR and READ 0
// back to back (docs/factory-protocol.md, section 12), so that the device
// makes its key while the HELLO reply is on the wire and sends the first
// chunk of the CSR right behind its CSR reply; on a device without v2 it
// runs HELLO, then CSR. csrErr is the CSR's failure, err HELLO's.
func (j *Jig) HelloCSR(ctx context.Context) (h *Hello, der []byte, csrErr, err error) {
	h, rep, first, csrErr, err := j.hello(ctx, true)
	if err != nil {
		return nil, nil, nil, err
	}
	if csrErr != nil {
		return h, nil, csrErr, nil
	}
	if rep == nil {
		der, csrErr = j.CSR(ctx)
		return h, der, csrErr, nil
	}
	der, csrErr = j.readoutFrom(ctx, rep, "CSR", []string{"READ"}, []string{"DATA"}, first)
	return h, der, csrErr, nil
}

// errNotV2 stops the HELLO 2 window when the device answered it with
// another version: what follows HELLO 2 ran in that version.
var errNotV2 = errors.New("HELLO 2 answered with another protocol")

// hello is Hello; with csr, a v2 jig pipelines CSR and READ 0 behind
// "HELLO 2" and returns the CSR reply and the first chunk (or the
// failure in csrErr).
func (j *Jig) hello(ctx context.Context, csr bool) (h *Hello, csrRep *Reply, first []byte, csrErr, err error) {
	// Drop anything a previous run left in the receive buffer.
	j.r.Reset()
	j.proto = 0
	if !j.V1Only && csr {
		reqs := []request{
			{words: []string{"HELLO", strconv.Itoa(factory.ProtocolV2)}, barrier: true},
			{words: []string{"CSR"}, barrier: true},
			{words: []string{"READ", "0"}},
		}
		werr := j.window(ctx, reqs, func(i int, r *Reply) error {
			switch i {
			case 0:
				if h, err = j.parseHello(r); err != nil {
					return err
				}
				if h.Proto != factory.ProtocolV2 {
					return errNotV2
				}
			case 1:
				csrRep = r
			case 2:
				first, err = readChunk(r, "READ", []string{"DATA"}, 0, j.chunk, csrRep.Fields["size"])
				return err
			}
			return nil
		})
		var nk *NAKError
		switch {
		case h != nil && errors.Is(werr, errNotV2):
			return h, nil, nil, nil, nil // the CSR ran in another version: send it again
		case h != nil && werr != nil:
			return h, nil, nil, werr, nil
		case h != nil:
			return h, csrRep, first, nil, nil
		case err != nil:
			return nil, nil, nil, nil, err // a bad HELLO reply
		case errors.As(werr, &nk) && nk.Reason == factory.ReasonArgs:
			// A device without v2: a bare HELLO opens a v1 session; the
			// CSR and READ replies, if any, are stale now.
		default:
			return nil, nil, nil, nil, werr
		}
	}
	var rep *Reply
	if !j.V1Only && !csr {
		// A device from before v2 (or with v2 off) refuses the argument;
		// then a bare HELLO opens a v1 session.
		rep, err = j.Do(ctx, false, "HELLO", strconv.Itoa(factory.ProtocolV2))
		var nk *NAKError
		if errors.As(err, &nk) && nk.Reason == factory.ReasonArgs {
			rep, err = nil, nil
		}
		if err != nil {
			return nil, nil, nil, nil, err
		}
	}
	if rep == nil {
		if rep, err = j.Do(ctx, false, "HELLO"); err != nil {
			return nil, nil, nil, nil, err
		}
	}
	h, err = j.parseHello(rep)
	return h, nil, nil, nil, err
}

// parseHello checks a HELLO reply and opens the session it names.
func (j *Jig) parseHello(rep *Reply) (*Hello, error) {
	h := &Hello{DeviceID: rep.Fields["id"], Key: rep.Fields["key"], State: factory.State(rep.Fields["state"])}
	h.Proto, _ = strconv.Atoi(rep.Fields["proto"])
	h.Chunk, _ = strconv.Atoi(rep.Fields["chunk"])
	h.Attest = rep.Fields["attest"] == "1"
	if h.Proto != factory.ProtocolVersion && (h.Proto != factory.ProtocolV2 || j.V1Only) {
		return nil, fmt.Errorf("device speaks factory protocol %q, this jig speaks %d", rep.Fields["proto"], factory.ProtocolVersion)
	}
	j.proto = h.Proto
	if h.DeviceID == "" {
		return nil, errors.New("HELLO reply has no device id")
	}
	if h.Chunk <= 0 || h.Chunk > j.maxChunk() {
		h.Chunk = j.maxChunk()
	}
	j.chunk = h.Chunk
	return h, nil
}

// CSR asks the device for its CSR (making the key if it has none) and
// returns it as DER, checked against the announced size and SHA-256.
func (j *Jig) CSR(ctx context.Context) ([]byte, error) {
	rep, err := j.Do(ctx, true, "CSR")
	if err != nil {
		return nil, err
	}
	return j.readout(ctx, rep, "CSR", []string{"READ"}, []string{"DATA"})
}

// readout reads the payload announced by rep ("size=N sha256=H") in
// chunks: request words read + OFFSET, reply words data + OFFSET BASE64;
// what names the payload in errors.
func (j *Jig) readout(ctx context.Context, rep *Reply, what string, read, data []string) ([]byte, error) {
	return j.readoutFrom(ctx, rep, what, read, data, nil)
}

// readoutFrom is readout when the first chunk (at offset 0) is in
// first already (nil: none): a v2 jig sends READ 0 right behind CSR.
func (j *Jig) readoutFrom(ctx context.Context, rep *Reply, what string, read, data []string, first []byte) ([]byte, error) {
	size, err := strconv.Atoi(rep.Fields["size"])
	if err != nil || size <= 0 || size > factory.MaxPayload {
		return nil, fmt.Errorf("%s reply: bad size %q", what, rep.Fields["size"])
	}
	want, err := hex.DecodeString(rep.Fields["sha256"])
	if err != nil || len(want) != sha256.Size {
		return nil, fmt.Errorf("%s reply: bad sha256 %q", what, rep.Fields["sha256"])
	}
	var out []byte
	if j.V2() {
		out, err = j.readoutWindow(ctx, size, read, data, first)
	} else {
		out = make([]byte, 0, size)
		for len(out) < size {
			rep, err := j.Do(ctx, false, read[0], append(append([]string(nil), read[1:]...), strconv.Itoa(len(out)))...)
			if err != nil {
				return nil, err
			}
			b, err := readChunk(rep, strings.Join(read, " "), data, len(out), size-len(out), "")
			if err != nil {
				return nil, err
			}
			out = append(out, b...)
		}
	}
	if err != nil {
		return nil, err
	}
	if sum := sha256.Sum256(out); !bytes.Equal(sum[:], want) {
		return nil, fmt.Errorf("%s: SHA-256 %x does not match the announced %x", what, sum, want)
	}
	return out, nil
}

// readChunk checks a reply to a read request (readName, e.g. "CHAIN
// READ") at offset off: the words data, off and a base64 chunk. With
// size "" the chunk holds 1..n bytes (v1: advance by what came); with
// size, exactly min(n, size-off) of the payload's size bytes.
func readChunk(rep *Reply, readName string, data []string, off, n int, size string) ([]byte, error) {
	// Positional: base64 may end in "=", so DATA is not key=value.
	k := len(data)
	if len(rep.Args) != k+2 || strings.Join(rep.Args[:k], " ") != strings.Join(data, " ") || rep.Args[k] != strconv.Itoa(off) {
		return nil, fmt.Errorf("%s reply: want %s %d BASE64, got %q", readName, strings.Join(data, " "), off, rep.Args)
	}
	b, err := base64.StdEncoding.DecodeString(rep.Args[k+1])
	if size != "" {
		total, aerr := strconv.Atoi(size)
		if want := min(n, total-off); aerr != nil || err != nil || len(b) != want {
			return nil, fmt.Errorf("%s reply at %d: bad chunk (want %d bytes of %s)", readName, off, want, size)
		}
		return b, nil
	}
	if err != nil || len(b) == 0 || len(b) > n {
		return nil, fmt.Errorf("%s reply at %d: bad chunk", readName, off)
	}
	return b, nil
}

// Attest sends ATTEST with nonce (factory.NonceSize bytes) and reads the
// board's attestation statement (JSON), checked against the announced
// size and SHA-256.
func (j *Jig) Attest(ctx context.Context, nonce []byte) ([]byte, error) {
	if len(nonce) != factory.NonceSize {
		return nil, fmt.Errorf("ATTEST: nonce is %d bytes, want %d", len(nonce), factory.NonceSize)
	}
	rep, err := j.Do(ctx, true, "ATTEST", hex.EncodeToString(nonce))
	if err != nil {
		return nil, err
	}
	if len(rep.Args) < 1 || rep.Args[0] != "ATTEST" {
		return nil, fmt.Errorf("ATTEST reply: want OK ATTEST size=N sha256=H, got %q", rep.Args)
	}
	return j.readout(ctx, rep, "ATTEST", []string{"ATTEST", "READ"}, []string{"ATTEST", "DATA"})
}

// Activate uploads the credential challenge (ACTIVATE BEGIN, DATA...)
// in chunks of at most chunk bytes, has the board activate it (ACTIVATE
// COMMIT) and returns the secret its TPM recovered.
func (j *Jig) Activate(ctx context.Context, credentialBlob, encryptedSecret []byte, chunk int) ([]byte, error) {
	bn, sn := len(credentialBlob), len(encryptedSecret)
	if bn == 0 || sn == 0 || bn+sn > factory.MaxActivate {
		return nil, fmt.Errorf("ACTIVATE: challenge of %d+%d bytes, want both non-empty and at most %d together", bn, sn, factory.MaxActivate)
	}
	if chunk <= 0 || chunk > j.maxChunk() {
		chunk = j.maxChunk()
	}
	up := append(append(make([]byte, 0, bn+sn), credentialBlob...), encryptedSecret...)
	sum := sha256.Sum256(up)
	if _, err := j.Do(ctx, false, "ACTIVATE", "BEGIN", strconv.Itoa(bn), strconv.Itoa(sn), hex.EncodeToString(sum[:])); err != nil {
		return nil, err
	}
	reqs, accept := dataRequests("ACTIVATE", up, chunk, 0)
	if err := j.sendData(ctx, reqs, accept); err != nil {
		return nil, err
	}
	rep, err := j.Do(ctx, true, "ACTIVATE", "COMMIT")
	if err != nil {
		return nil, err
	}
	secret, err := base64.StdEncoding.DecodeString(rep.Fields["secret"])
	if len(rep.Args) != 3 || rep.Args[0] != "ACTIVATE" || rep.Args[1] != "COMMIT" || err != nil || len(secret) == 0 || len(secret) > factory.MaxSecret {
		return nil, fmt.Errorf("ACTIVATE COMMIT reply: want secret=BASE64 of 1..%d bytes, got %q", factory.MaxSecret, rep.Args)
	}
	return secret, nil
}

// Installed is the device's answer to INSTALL COMMIT.
type Installed struct {
	Serial   string
	NotAfter string
	// State is the device's state after COMMIT, as STATUS would report
	// it; v2 devices send it (state=), v1 devices leave it empty.
	State factory.State
}

// Install uploads chainPEM in chunks and commits it. In a v2 session the
// chain travels as DER certificates back to back (the device stores PEM).
func (j *Jig) Install(ctx context.Context, chainPEM []byte, chunk int) (*Installed, error) {
	if j.V2() {
		certs, err := certstore.ParsePEM(chainPEM)
		if err != nil {
			return nil, fmt.Errorf("install: %w", err)
		}
		chainPEM = nil
		for _, c := range certs {
			chainPEM = append(chainPEM, c.Raw...)
		}
	}
	if len(chainPEM) == 0 || len(chainPEM) > factory.MaxPayload {
		return nil, fmt.Errorf("install: chain is %d bytes, want 1..%d", len(chainPEM), factory.MaxPayload)
	}
	if chunk <= 0 || chunk > j.maxChunk() {
		chunk = j.maxChunk()
	}
	sum := sha256.Sum256(chainPEM)
	begin := []string{"INSTALL", "BEGIN", strconv.Itoa(len(chainPEM)), hex.EncodeToString(sum[:])}
	if j.V2() {
		return j.installWindow(ctx, begin, chainPEM, chunk)
	}
	if _, err := j.Do(ctx, false, begin[0], begin[1:]...); err != nil {
		return nil, err
	}
	reqs, accept := dataRequests("INSTALL", chainPEM, chunk, 0)
	if err := j.sendData(ctx, reqs, accept); err != nil {
		return nil, err
	}
	rep, err := j.Do(ctx, true, "INSTALL", "COMMIT")
	if err != nil {
		return nil, err
	}
	return &Installed{Serial: rep.Fields["serial"], NotAfter: rep.Fields["not_after"], State: factory.State(rep.Fields["state"])}, nil
}

// Status is the device's answer to STATUS.
type Status struct {
	State    factory.State
	DeviceID string
	Key      string
	Serial   string
	NotAfter string
	Detail   string
}

// Status sends STATUS.
func (j *Jig) Status(ctx context.Context) (*Status, error) {
	rep, err := j.Do(ctx, false, "STATUS")
	if err != nil {
		return nil, err
	}
	return &Status{State: factory.State(rep.Fields["state"]), DeviceID: rep.Fields["id"], Key: rep.Fields["key"],
		Serial: rep.Fields["serial"], NotAfter: rep.Fields["not_after"], Detail: rep.Fields["detail"]}, nil
}

// Reset destroys the device's certificate and key: it asks for the
// confirmation token and sends it back.
func (j *Jig) Reset(ctx context.Context) error {
	rep, err := j.Do(ctx, false, "RESET")
	if err != nil {
		return err
	}
	tok := rep.Fields["token"]
	if tok == "" {
		return errors.New("RESET reply carries no token")
	}
	_, err = j.Do(ctx, true, "RESET", tok)
	return err
}

// Chain reads the chain installed on the device back (CHAIN, then CHAIN
// READ...) as PEM, leaf first, checked against the announced size and
// SHA-256. A device without a chain answers NAK state.
func (j *Jig) Chain(ctx context.Context) ([]byte, error) {
	rep, err := j.Do(ctx, false, "CHAIN")
	if err != nil {
		return nil, err
	}
	if len(rep.Args) < 1 || rep.Args[0] != "CHAIN" {
		return nil, fmt.Errorf("CHAIN reply: want OK CHAIN size=N sha256=H, got %q", rep.Args)
	}
	b, err := j.readout(ctx, rep, "CHAIN", []string{"CHAIN", "READ"}, []string{"CHAIN", "DATA"})
	if err != nil || !j.V2() {
		return b, err
	}
	// v2 sends the certificates as DER back to back.
	certs, err := x509.ParseCertificates(b)
	if err != nil || len(certs) == 0 {
		return nil, fmt.Errorf("CHAIN: not DER certificates: %v", err)
	}
	return certstore.EncodePEM(certs...), nil
}
