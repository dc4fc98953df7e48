package jig

import (
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"devid/enroll/factory"
)

// DefaultWindow is how many READ or DATA requests a v2 jig keeps in
// flight before it waits for a reply (docs/factory-protocol.md, section 12).
const DefaultWindow = 4

// request is one request of a window: its words (verb, then arguments)
// and whether it is a barrier, a request whose effect the replies to the
// requests after it depend on: HELLO 2 (the session's version and chunk
// size), CSR (what READ reads) and INSTALL BEGIN (the upload DATA adds to).
type request struct {
	words   []string
	barrier bool
}

// name is how errors name a request: its verb, with the subcommand of
// INSTALL, ACTIVATE, ATTEST and CHAIN ("INSTALL DATA", "ATTEST READ").
func (r request) name() string {
	if len(r.words) > 1 {
		switch r.words[1] {
		case "BEGIN", "DATA", "COMMIT", "READ":
			return r.words[0] + " " + r.words[1]
		}
	}
	return r.words[0]
}

// window sends reqs as consecutive requests, keeping up to Window of them
// unanswered, and hands each OK reply to accept with the request's index.
// The device answers in order, so:
//   - a reply to request i means every copy of an earlier request sent
//     before request i's first copy was answered: if one of them is still
//     unanswered its reply was lost, and it is re-sent at once;
//   - a "-" NAK (a damaged frame), a corrupt reply or ReplyTimeout of
//     silence re-sends every unanswered request from the first one;
//   - a device NAK for request i while an earlier one is unanswered is a
//     consequence of the gap (INSTALL DATA after a lost chunk answers NAK
//     offset), and so is an OK for request i behind an unanswered
//     barrier: the reply does not count, and request i is re-sent unless
//     a copy of it already went out after the earlier request's latest;
//   - a device NAK for the first unanswered request is final (*NAKError).
//
// A BUSY for an unanswered request extends the wait as in Do (up to
// SlowTimeout in all). Each re-send is preceded by a lone LF, as in Do.
// After Retries rounds of re-sending without the first unanswered
// request being answered, window gives up with ErrNoReply.
func (j *Jig) window(ctx context.Context, reqs []request, accept func(i int, rep *Reply) error) error {
	ws := j.newWindow(reqs)
	for ws.base < ws.n {
		for ; ws.next < ws.n && ws.next < ws.base+ws.w; ws.next++ {
			if err := ws.send(ws.next, false); err != nil {
				return err
			}
			ws.deadline = time.Now().Add(ws.timeout)
		}
		if err := ctx.Err(); err != nil {
			return err
		}
		line, err := j.r.Next(ctx, ws.deadline, 0)
		if err != nil {
			switch {
			case errors.Is(err, factory.ErrLineTooLong):
				continue
			case errors.Is(err, factory.ErrDeadline):
				if err := ws.resend(ws.next, -1, errors.New("no reply")); err != nil {
					return err
				}
				ws.deadline = time.Now().Add(ws.timeout)
				continue
			}
			return err
		}
		j.Received += len(line) + 1
		f, err := factory.ParseFrame(line)
		if err != nil {
			if err := ws.resend(ws.next, -1, fmt.Errorf("corrupt reply: %w", err)); err != nil {
				return err
			}
			continue
		}
		if err := ws.reply(f, accept); err != nil {
			return err
		}
	}
	return nil
}

// windowState is one window run: the frames, what was sent and answered.
type windowState struct {
	j                  *Jig
	reqs               []request
	w, n               int
	timeout, slow      time.Duration
	retries            int
	frames             [][]byte
	index              map[int]int // seq → request
	done               []bool
	first, last        []int // send order of each request's first and latest copy
	sent               int
	base, next, rounds int
	start, deadline    time.Time
}

func (j *Jig) newWindow(reqs []request) *windowState {
	ws := &windowState{j: j, reqs: reqs, w: j.Window, timeout: j.ReplyTimeout, retries: j.Retries, slow: j.SlowTimeout, n: len(reqs)}
	if ws.w <= 0 {
		ws.w = DefaultWindow
	}
	if ws.timeout <= 0 {
		ws.timeout = DefaultReplyTimeout
	}
	if ws.retries <= 0 {
		ws.retries = DefaultRetries
	}
	if ws.slow <= 0 {
		ws.slow = DefaultSlowTimeout
	}
	ws.frames, ws.index = make([][]byte, ws.n), make(map[int]int, ws.n)
	for i, r := range reqs {
		seq := j.nextSeq()
		ws.frames[i] = factory.Encode(seq, r.words[0], r.words[1:]...)
		ws.index[seq] = i
	}
	ws.done, ws.first, ws.last = make([]bool, ws.n), make([]int, ws.n), make([]int, ws.n)
	ws.start = time.Now()
	ws.deadline = ws.start.Add(ws.timeout)
	return ws
}

// send writes request i (again: a re-send, after a lone LF).
func (ws *windowState) send(i int, again bool) error {
	f := ws.frames[i]
	if again {
		f = append([]byte("\n"), f...)
	} else {
		ws.first[i] = ws.sent
	}
	ws.sent++
	ws.last[i] = ws.sent - 1
	if _, err := ws.j.port.Write(f); err != nil {
		return fmt.Errorf("%s: %w", ws.reqs[i].name(), err)
	}
	ws.j.Sent += len(f)
	return nil
}

// resend re-sends the unanswered requests in [base, upto) whose latest
// copy went out before limit in send order (all of them: limit = -1).
func (ws *windowState) resend(upto, limit int, cause error) error {
	var again []int
	for i := ws.base; i < upto; i++ {
		if !ws.done[i] && (limit < 0 || ws.last[i] < limit) {
			again = append(again, i)
		}
	}
	if len(again) == 0 {
		return nil
	}
	ws.rounds++
	if ws.rounds > ws.retries {
		return fmt.Errorf("%s: %w after %d attempts: %v", ws.reqs[ws.base].name(), ErrNoReply, ws.retries+1, cause)
	}
	for _, i := range again {
		if err := ws.send(i, true); err != nil {
			return err
		}
	}
	return nil
}

// reply handles one well-formed frame from the device.
func (ws *windowState) reply(f factory.Frame, accept func(i int, rep *Reply) error) error {
	i, ours := ws.index[f.Seq]
	switch {
	case !f.CRC:
		return nil // not from a device
	case f.Verb == "NAK" && f.Seq == factory.NoSeq:
		if len(f.Args) > 0 && f.Args[0] == factory.ReasonTimeout {
			return nil // an older half frame, not ours
		}
		return ws.resend(ws.next, -1, fmt.Errorf("device could not read a frame: %s", strings.Join(f.Args, " ")))
	case !ours || ws.done[i]:
		return nil // stale or a duplicate
	case f.Verb == "BUSY":
		// The device works on request i (a CSR making a key): wait
		// on, up to SlowTimeout from the start, as Do does.
		ws.deadline = time.Now().Add(ws.timeout)
		if end := ws.start.Add(ws.slow); ws.deadline.After(end) {
			ws.deadline = end
		}
		return nil
	}
	// Copies of earlier requests sent before this one's first copy were
	// answered; the unanswered ones lost their reply.
	gap, barrier := false, false
	for k := ws.base; k < i; k++ {
		if !ws.done[k] {
			gap, barrier = true, barrier || ws.reqs[k].barrier
		}
	}
	if gap {
		if err := ws.resend(i, ws.first[i], errors.New("reply lost")); err != nil {
			return err
		}
	}
	switch {
	case f.Verb == "NAK":
		return ws.nak(f, i, gap)
	case f.Verb != "OK":
		return nil
	case barrier:
		// Executed before the barrier took effect: it does not count.
		return ws.behind(i)
	}
	rep := &Reply{Args: f.Args, Fields: map[string]string{}}
	for _, a := range f.Args {
		if k, v, ok := strings.Cut(a, "="); ok && isFieldKey(k) {
			rep.Fields[k] = v
		}
	}
	if err := accept(i, rep); err != nil {
		return err
	}
	ws.done[i] = true
	for ws.base < ws.n && ws.done[ws.base] {
		ws.base++
		ws.rounds = 0
	}
	ws.deadline = time.Now().Add(ws.timeout)
	return nil
}

// nak handles a NAK for request i; gap says an earlier request was
// unanswered.
func (ws *windowState) nak(f factory.Frame, i int, gap bool) error {
	if len(f.Args) == 0 {
		return fmt.Errorf("%s: NAK without a reason", ws.reqs[i].name())
	}
	switch f.Args[0] {
	case factory.ReasonCRC, factory.ReasonBadChar, factory.ReasonSyntax, factory.ReasonTooLong, factory.ReasonCRCMissing:
		return ws.resend(ws.next, -1, fmt.Errorf("device could not read the frame: %s", strings.Join(f.Args, " ")))
	}
	if gap {
		return ws.behind(i) // caused by the gap
	}
	return &NAKError{Verb: ws.reqs[i].name(), Reason: f.Args[0], Detail: strings.Join(f.Args[1:], " ")}
}

// behind handles a reply to request i that does not count because an
// earlier request is unanswered: request i must run again after that
// request, so it is re-sent unless its latest copy already went out
// after the latest copy of every earlier unanswered request.
func (ws *windowState) behind(i int) error {
	for k := ws.base; k < i; k++ {
		if !ws.done[k] && ws.last[k] > ws.last[i] {
			return ws.send(i, true)
		}
	}
	return nil
}

// installWindow is Install in a v2 session: BEGIN, the DATA requests and
// COMMIT go out as one window (docs/factory-protocol.md, section 12).
// BEGIN is a barrier; a v2 device keeps the upload when BEGIN is resent.
func (j *Jig) installWindow(ctx context.Context, begin []string, up []byte, chunk int) (*Installed, error) {
	reqs, data := dataRequests("INSTALL", up, chunk, 1)
	reqs = append([]request{{words: begin, barrier: true}}, reqs...)
	reqs = append(reqs, request{words: []string{"INSTALL", "COMMIT"}})
	var commit *Reply
	err := j.window(ctx, reqs, func(i int, rep *Reply) error {
		switch i {
		case 0:
			if len(rep.Args) != 3 || rep.Args[0] != "INSTALL" || rep.Args[1] != "BEGIN" || rep.Fields["size"] != begin[2] {
				return fmt.Errorf("INSTALL BEGIN reply: want INSTALL BEGIN size=%s, got %q", begin[2], rep.Args)
			}
		case len(reqs) - 1:
			commit = rep
		default:
			return data(i, rep)
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return &Installed{Serial: commit.Fields["serial"], NotAfter: commit.Fields["not_after"], State: factory.State(commit.Fields["state"])}, nil
}

// dataRequests are the DATA requests of an upload (verb INSTALL or
// ACTIVATE) in chunks of chunk bytes, and the check of their replies
// for a window in which they start at index from. The device answers
// each with have=N, the bytes it holds.
func dataRequests(verb string, up []byte, chunk, from int) ([]request, func(i int, rep *Reply) error) {
	var reqs []request
	var ends []int
	for off := 0; off < len(up); off += chunk {
		end := min(off+chunk, len(up))
		reqs = append(reqs, request{words: []string{verb, "DATA", strconv.Itoa(off), base64.StdEncoding.EncodeToString(up[off:end])}})
		ends = append(ends, end)
	}
	return reqs, func(i int, rep *Reply) error {
		// A re-sent chunk may be answered after later ones arrived: have
		// is then beyond its end, never before it.
		have, err := strconv.Atoi(rep.Fields["have"])
		// v2 acknowledges with the short "OK have=N".
		if len(rep.Args) != 1 || err != nil || have < ends[i-from] || have > len(up) {
			return fmt.Errorf("%s DATA reply: want OK have=N of at least %d, got %q", verb, ends[i-from], rep.Args)
		}
		return nil
	}
}

// sendData sends DATA requests: stop-and-wait in v1 (any OK will do,
// as before v2), a window in v2.
func (j *Jig) sendData(ctx context.Context, reqs []request, accept func(i int, rep *Reply) error) error {
	if j.V2() {
		return j.window(ctx, reqs, accept)
	}
	for _, r := range reqs {
		if _, err := j.Do(ctx, false, r.words[0], r.words[1:]...); err != nil {
			return err
		}
	}
	return nil
}

// readoutWindow is readout in a v2 session: the read requests for every
// chunk go out in a window; each reply must carry exactly its chunk.
// first, if not nil, is the chunk at offset 0, read already.
func (j *Jig) readoutWindow(ctx context.Context, size int, read, data []string, first []byte) ([]byte, error) {
	readName := strings.Join(read, " ")
	chunk := j.chunk
	if chunk <= 0 {
		chunk = j.maxChunk()
	}
	out := make([]byte, size)
	start := 0
	if first != nil {
		if len(first) != min(chunk, size) {
			return nil, fmt.Errorf("%s reply at 0: bad chunk (want %d bytes)", readName, min(chunk, size))
		}
		start = copy(out, first)
	}
	var reqs []request
	for off := start; off < size; off += chunk {
		reqs = append(reqs, request{words: append(append([]string(nil), read...), strconv.Itoa(off))})
	}
	total := strconv.Itoa(size)
	err := j.window(ctx, reqs, func(i int, rep *Reply) error {
		off := start + i*chunk
		b, err := readChunk(rep, readName, data, off, chunk, total)
		copy(out[off:], b)
		return err
	})
	if err != nil {
		return nil, err
	}
	return out, nil
}
