package factory

import (
	"bytes"
	"context"
	"crypto"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"time"

	"devid/enroll/certstore"
	"devid/enroll/csr"
	"devid/enroll/keys"
	"devid/hal/serial"
)

// DefaultFrameTimeout is how long the device keeps half a frame with no
// new byte before dropping it (and NAKing "timeout").
const DefaultFrameTimeout = 2 * time.Second

// DefaultBusyInterval is how often Serve sends "SEQ BUSY" while a command
// is still running (key generation on a discrete TPM, disk syncs), so
// that the jig can tell a working board from a dead one.
const DefaultBusyInterval = 500 * time.Millisecond

// Device serves the factory protocol on one port. Fields must be set
// before Serve; Serve is not safe to call twice at once.
type Device struct {
	// ID is the normalised device ID (hal/board).
	ID string
	// Keys is the device key backend.
	Keys keys.Store
	// Certs is the certificate store, opened with the factory root.
	Certs *certstore.Store
	// Log receives one record per command; nil discards.
	Log *slog.Logger
	// FrameTimeout is DefaultFrameTimeout when zero.
	FrameTimeout time.Duration
	// Attester, if set, lets the jig check that the key is in a TPM:
	// HELLO offers attest=1 and ATTEST and ACTIVATE work. nil (a software
	// key, or no attestation support) makes them answer NAK unsupported.
	Attester Attester
	// BusyInterval is DefaultBusyInterval when zero.
	BusyInterval time.Duration
	// NoV2 makes the device speak protocol 1 only, as firmware from
	// before v2: HELLO does not offer v2=1 and "HELLO 2" is NAK bad-args.
	NoV2 bool

	// Session state: reset by RESET and at start.
	proto     int              // protocol of this session (HELLO or HELLO 2); 0 is 1
	outbox    []byte           // last CSR (DER), read with READ
	outboxPub crypto.PublicKey // the key outbox is for
	upload    []byte           // INSTALL DATA so far
	upSize    int
	upDigest  []byte
	upOpen    bool
	token     string // pending RESET confirmation
	attOut    []byte // last attestation statement, read with ATTEST READ
	act       activation
	chainOut  []byte // installed chain as CHAIN announced it, read with CHAIN READ
	lastReq   *Frame // last request executed (parsed: CRC case does not matter)
	lastResp  []byte // and its response, replayed for a repeat
}

// Serve answers frames on port until ctx is done (returning ctx.Err()) or
// the port fails. It never waits forever on half a frame.
func (d *Device) Serve(ctx context.Context, port serial.Port) error {
	idle := d.FrameTimeout
	if idle <= 0 {
		idle = DefaultFrameTimeout
	}
	// A power cut during COMMIT or key creation leaves temp files; at
	// start nothing else can be writing them.
	d.removeTemps()
	r := NewLineReader(port)
	for {
		line, err := r.Next(ctx, time.Time{}, idle)
		var resp []byte
		switch {
		case err == nil:
			var werr error
			resp, werr = d.handleBusy(ctx, port, line)
			if werr != nil {
				if ctx.Err() != nil {
					return ctx.Err()
				}
				return fmt.Errorf("factory bus: %w", werr)
			}
		case errors.Is(err, ErrLineTooLong):
			resp = Encode(NoSeq, "NAK", ReasonTooLong, "line", "longer", "than", strconv.Itoa(MaxLine), "bytes")
		case errors.Is(err, ErrPartialLine):
			resp = Encode(NoSeq, "NAK", ReasonTimeout, "partial", "frame", "dropped", "after", idle.String())
		case ctx.Err() != nil:
			return ctx.Err()
		default:
			return fmt.Errorf("factory bus: %w", err)
		}
		if resp == nil {
			continue
		}
		if _, err := port.Write(resp); err != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			return fmt.Errorf("factory bus: %w", err)
		}
	}
}

func (d *Device) log() *slog.Logger {
	if d.Log == nil {
		return slog.New(slog.DiscardHandler)
	}
	return d.Log
}

// ServePort serves the serial device at path until ctx is done. If the
// port cannot be opened at the start, that is returned (a configuration
// error); once serving, a port that fails (a USB adapter or gadget port
// gives EIO while the jig's cable is out) is reopened every retry interval
// until ctx ends, and ServePort returns nil.
func (d *Device) ServePort(ctx context.Context, path string, baud int) error {
	const retry = time.Second
	p, err := serial.Open(path, baud)
	if err != nil {
		return err
	}
	for {
		err := d.Serve(ctx, p)
		p.Close()
		if ctx.Err() != nil {
			return nil
		}
		d.log().Warn("factory bus failed; reopening", "port", path, "err", err)
		for p = nil; p == nil; {
			select {
			case <-ctx.Done():
				return nil
			case <-time.After(retry):
			}
			p, _ = serial.Open(path, baud)
		}
	}
}

// Handle executes one request line and returns the response line, or nil
// for lines that get no answer (responses echoed back to us). It is the
// whole command decoder; Serve adds only line framing.
func (d *Device) Handle(line []byte) []byte { return d.handle(context.Background(), line) }

// handle is Handle with the context that bounds TPM work (ATTEST, ACTIVATE).
func (d *Device) handle(ctx context.Context, line []byte) []byte {
	f, err := ParseFrame(line)
	if err != nil {
		var fe *FrameError
		errors.As(err, &fe)
		d.log().Warn("bad frame", "reason", fe.Reason, "detail", fe.Detail)
		return EncodeFit(fe.Seq, "NAK", 1, append([]string{fe.Reason}, Words(fe.Detail)...)...)
	}
	if isReply(f.Verb) {
		return nil // our own replies looped back: answering would start a storm
	}
	if !f.CRC && f.Verb != "HELLO" && f.Verb != "STATUS" {
		return EncodeFit(f.Seq, "NAK", 1, ReasonCRCMissing, f.Verb, "needs", "a", "CRC")
	}
	// A repeat of the last request (same sequence number, verb and
	// arguments, however the CRC digits were cased) means our reply was
	// lost: send it again without executing twice.
	if d.lastResp != nil && sameRequest(d.lastReq, f) {
		d.log().Debug("repeat", "seq", f.Seq, "verb", f.Verb)
		return d.lastResp
	}
	if f.Seq == NoSeq {
		return Encode(NoSeq, "NAK", ReasonSyntax, "requests", "need", "a", "sequence", "number")
	}
	if f.Verb != "RESET" {
		d.token = ""
	}
	args := d.exec(ctx, f)
	// A NAK's reason stays whole, its text may be cut to fit; an OK reply
	// is built to fit and is never cut.
	keep := len(args)
	if args[0] == "NAK" {
		keep = 1
		if len(args) > 2 && (args[1] == ReasonCert || args[1] == ReasonAttest) {
			keep = 2 // and the cause after it
		}
	}
	resp := EncodeFit(f.Seq, args[0], keep, args[1:]...)
	// Chunk transfers are many and bulky: keep them out of the default log.
	level := slog.LevelInfo
	if f.Verb == "READ" || f.Verb == "CHAIN" && len(f.Args) > 0 || (len(f.Args) > 0 && args[0] == "OK" &&
		((f.Verb == "INSTALL" || f.Verb == "ACTIVATE") && f.Args[0] == "DATA" || f.Verb == "ATTEST" && f.Args[0] == "READ")) {
		level = slog.LevelDebug
	}
	logged := string(bytes.TrimSpace(resp))
	if f.Verb == "ACTIVATE" && args[0] == "OK" && len(args) > 2 && args[2] == "COMMIT" {
		logged = "OK ACTIVATE COMMIT (secret not logged)"
	}
	d.log().Log(context.Background(), level, "command", "seq", f.Seq, "verb", f.Verb, "reply", logged)
	d.lastReq, d.lastResp = &f, resp
	return resp
}

// sameRequest reports whether f repeats last: the parsed request, not its
// bytes, so "1 RESET *ABCDEF12" repeats "1 RESET *abcdef12" and "1 hello"
// repeats "1 HELLO".
func sameRequest(last *Frame, f Frame) bool {
	if last == nil || last.Seq != f.Seq || last.Verb != f.Verb || len(last.Args) != len(f.Args) {
		return false
	}
	for i := range f.Args {
		if last.Args[i] != f.Args[i] {
			return false
		}
	}
	return true
}

// release closes a key that holds a resource (a TPM key holds one of the
// TPM's few object slots); keys are loaded per command, so state on disk
// is always what the device reports.
func nak(reason string, detail ...string) []string { return append([]string{"NAK", reason}, detail...) }

func (d *Device) exec(ctx context.Context, f Frame) []string {
	switch f.Verb {
	case "HELLO":
		// A bare HELLO starts a v1 session (what every jig from before v2
		// sends); "HELLO 2" a v2 one. A device with NoV2 answers "HELLO 2"
		// as a device from before v2 does: NAK bad-args.
		switch {
		case len(f.Args) == 0:
			d.proto = ProtocolVersion
		case len(f.Args) == 1 && f.Args[0] == strconv.Itoa(ProtocolV2) && !d.NoV2:
			d.proto = ProtocolV2
		default:
			return nak(ReasonArgs, "HELLO", "takes", "no", "arguments")
		}
		st, _, _ := d.state()
		out := []string{"OK", "HELLO", "proto=" + strconv.Itoa(d.proto), "id=" + d.ID,
			"key=" + d.Keys.Name(), "state=" + string(st), "chunk=" + strconv.Itoa(d.chunk()), "max=" + strconv.Itoa(MaxLine)}
		if !d.NoV2 && d.proto == ProtocolVersion {
			out = append(out, "v2=1")
		}
		if d.Attester != nil {
			out = append(out, "attest=1")
		}
		return out
	case "STATUS":
		if len(f.Args) != 0 {
			return nak(ReasonArgs, "STATUS", "takes", "no", "arguments")
		}
		return d.status()
	case "CSR":
		if len(f.Args) != 0 {
			return nak(ReasonArgs, "CSR", "takes", "no", "arguments")
		}
		return d.csr()
	case "READ":
		return d.read(f.Args)
	case "CHAIN":
		return d.chainCmd(f.Args)
	case "INSTALL":
		return d.install(f.Args)
	case "RESET":
		return d.reset(f.Args)
	case "ATTEST":
		return d.attest(ctx, f.Args)
	case "ACTIVATE":
		return d.activate(ctx, f.Args)
	}
	return nak(ReasonUnknown, f.Verb)
}

// state derives the programming state from what is on disk, so that it is
// right after a power cut as well as within a session. It also returns
// the installed chain, nil when none could be loaded.
func (d *Device) state() (State, string, *certstore.Chain) {
	key, kerr := d.Keys.Load()
	defer keys.Close(key)
	chain, cerr := d.Certs.Load()
	switch {
	case kerr != nil && !errors.Is(kerr, keys.ErrNoKey):
		return StateError, kerr.Error(), chain
	case cerr != nil && !errors.Is(cerr, certstore.ErrNoChain):
		return StateError, cerr.Error(), chain
	case kerr != nil && cerr != nil:
		return StateBlank, "", chain
	case kerr != nil:
		return StateInconsistent, "certificate installed but no device key", chain
	case cerr != nil:
		return StateKeyed, "", chain
	case !chain.Matches(key.Public()):
		return StateInconsistent, "installed certificate is for another key", chain
	}
	return StateProgrammed, "", chain
}

func (d *Device) status() []string {
	st, why, chain := d.state()
	out := []string{"OK", "STATUS", "state=" + string(st), "id=" + d.ID, "key=" + d.Keys.Name()}
	if chain != nil {
		out = append(out, "serial="+chain.Serial(), "not_after="+chain.NotAfter().UTC().Format(time.RFC3339))
	}
	if why != "" {
		out = append(out, "detail="+sanitize(why))
	}
	return fitStatus(out)
}

func (d *Device) csr() []string {
	key, err := d.Keys.Load()
	defer func() { keys.Close(key) }()
	if errors.Is(err, keys.ErrNoKey) {
		// Making a key while a certificate is stored would orphan that
		// certificate: only RESET may start a new identity.
		if _, cerr := d.Certs.Load(); cerr == nil {
			return d.stateNAK(ReasonRefused)
		}
		key, err = d.Keys.Create()
	}
	if err != nil {
		return nak(ReasonInternal, Words(err.Error())...)
	}
	// The same key gets the same CSR again within a session, so that a
	// CSR executed twice (a v2 jig resends a window that held it: docs/
	// factory-protocol.md, section 12) leaves what the first reply
	// announced readable. ECDSA signatures differ on every signing.
	der := d.outbox
	if k, ok := key.Public().(interface{ Equal(crypto.PublicKey) bool }); !ok || der == nil || !k.Equal(d.outboxPub) {
		if der, err = csr.Create(key, d.ID); err != nil {
			return nak(ReasonInternal, Words(err.Error())...)
		}
	}
	d.outbox, d.outboxPub = der, key.Public()
	sum := sha256.Sum256(der)
	return []string{"OK", "CSR", "size=" + strconv.Itoa(len(der)), "sha256=" + hex.EncodeToString(sum[:])}
}

func (d *Device) read(args []string) []string {
	if len(args) != 1 {
		return nak(ReasonArgs, "usage:", "READ", "OFFSET")
	}
	return readChunk(d.outbox, args[0], []string{"DATA"}, "CSR", d.chunk())
}

func (d *Device) install(args []string) []string {
	if len(args) == 0 {
		return nak(ReasonArgs, "usage:", "INSTALL", "BEGIN|DATA|COMMIT")
	}
	switch sub := args[0]; sub {
	case "BEGIN":
		if len(args) != 3 {
			return nak(ReasonArgs, "usage:", "INSTALL", "BEGIN", "SIZE", "SHA256")
		}
		size, err := strconv.Atoi(args[1])
		if err != nil || size <= 0 || size > MaxPayload {
			return nak(ReasonSize, "size", args[1], "not", "in", "1.."+strconv.Itoa(MaxPayload))
		}
		sum, err := hex.DecodeString(args[2])
		if err != nil || len(sum) != sha256.Size {
			return nak(ReasonArgs, "SHA256", "must", "be", "64", "hex", "digits")
		}
		if d.v2() && d.upOpen && size == d.upSize && bytes.Equal(sum, d.upDigest) {
			// v2: BEGIN for the upload under way keeps it, so that a jig
			// may send BEGIN in the window of its DATA requests and resend
			// it after them (docs/factory-protocol.md, section 12).
			return []string{"OK", "INSTALL", "BEGIN", "size=" + args[1]}
		}
		d.upload, d.upSize, d.upDigest, d.upOpen = make([]byte, 0, size), size, sum, true
		return []string{"OK", "INSTALL", "BEGIN", "size=" + args[1]}
	case "DATA":
		if len(args) != 3 {
			return nak(ReasonArgs, "usage:", "INSTALL", "DATA", "OFFSET", "BASE64")
		}
		if !d.upOpen {
			return nak(ReasonState, "no", "upload;", "send", "INSTALL", "BEGIN")
		}
		var nk []string
		if d.upload, nk = appendChunk(d.upload, d.upSize, args[1], args[2], d.chunk()); nk != nil {
			return nk
		}
		return d.dataAck("INSTALL", len(d.upload))
	case "COMMIT":
		if len(args) != 1 {
			return nak(ReasonArgs, "INSTALL", "COMMIT", "takes", "no", "arguments")
		}
		return d.commit()
	default:
		return nak(ReasonArgs, "INSTALL", sub, "is", "not", "BEGIN|DATA|COMMIT")
	}
}

func (d *Device) commit() []string {
	if !d.upOpen {
		return nak(ReasonState, "no", "upload;", "send", "INSTALL", "BEGIN")
	}
	if len(d.upload) != d.upSize {
		return nak(ReasonSize, "have", strconv.Itoa(len(d.upload)), "of", strconv.Itoa(d.upSize), "bytes")
	}
	if sum := sha256.Sum256(d.upload); !bytes.Equal(sum[:], d.upDigest) {
		if d.v2() {
			// The bytes are complete and wrong: drop them, or a v2 BEGIN
			// with the same digest would keep them.
			d.upload, d.upOpen = nil, false
		}
		return nak(ReasonDigest, "upload", "SHA-256", "is", hex.EncodeToString(sum[:]))
	}
	key, err := d.Keys.Load()
	defer keys.Close(key)
	if errors.Is(err, keys.ErrNoKey) {
		return d.stateNAK(ReasonState)
	}
	if err != nil {
		return nak(ReasonInternal, Words(err.Error())...)
	}
	up := d.upload
	if d.v2() {
		// v2 uploads the chain as DER certificates back to back; the
		// store keeps PEM, as v1 sends it.
		certs, err := x509.ParseCertificates(up)
		if err != nil || len(certs) == 0 {
			return nak(ReasonCert, append([]string{string(certstore.ReasonMalformed)}, Words(fmt.Sprint("DER chain: ", err))...)...)
		}
		up = certstore.EncodePEM(certs...)
	}
	chain, err := d.Certs.Install(up, key.Public(), d.ID)
	var rej *certstore.RejectError
	if errors.As(err, &rej) {
		return nak(ReasonCert, append([]string{string(rej.Reason)}, Words(rej.Detail)...)...)
	}
	if err != nil {
		return nak(ReasonInternal, Words(err.Error())...)
	}
	// The upload stays open, so repeating COMMIT re-installs the same
	// chain and succeeds again (idempotent).
	out := []string{"OK", "INSTALL", "COMMIT", "serial=" + chain.Serial(),
		"not_after=" + chain.NotAfter().UTC().Format(time.RFC3339)}
	if d.v2() {
		// v2: the state as STATUS would report it, read back from disk,
		// so that the jig needs no STATUS after COMMIT.
		st, _, _ := d.state()
		out = append(out, "state="+string(st))
	}
	return out
}

func (d *Device) reset(args []string) []string {
	switch len(args) {
	case 0:
		var b [4]byte
		_, _ = rand.Read(b[:])
		d.token = hex.EncodeToString(b[:])
		return []string{"OK", "RESET", "token=" + d.token}
	case 1:
		if d.token == "" || args[0] != d.token {
			d.token = ""
			return nak(ReasonToken, "send", "RESET", "alone", "for", "a", "token,", "then", "RESET", "TOKEN")
		}
		d.token = ""
		// Certificate first: a power cut between the two steps leaves a
		// keyed device, never a certificate without its key.
		if err := d.Certs.Remove(); err != nil {
			return nak(ReasonInternal, Words(err.Error())...)
		}
		if err := d.Keys.Destroy(); err != nil {
			return nak(ReasonInternal, Words(err.Error())...)
		}
		d.outbox, d.outboxPub, d.upload, d.upOpen, d.attOut, d.act, d.chainOut = nil, nil, nil, false, nil, activation{}, nil
		d.removeTemps()
		d.log().Warn("factory reset: key and certificate destroyed")
		return []string{"OK", "RESET", "done", "state=" + string(StateBlank)}
	}
	return nak(ReasonArgs, "usage:", "RESET", "[TOKEN]")
}
