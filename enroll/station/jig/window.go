package jig

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"devid/enroll/factory"
)

// DefaultWindow is how many READ or DATA requests a v2 jig keeps in
// flight before it waits for a reply (docs/factory-protocol.md, section 12).
const DefaultWindow = 4

// window sends reqs (each verb then arguments) as consecutive requests,
// keeping up to Window of them unanswered, and hands each OK reply to
// accept with the request's index. The device answers in order, so:
//   - a reply to request i means every copy of an earlier request sent
//     before request i's first copy was answered: if one of them is still
//     unanswered its reply was lost, and it is re-sent at once;
//   - a "-" NAK (a damaged frame), a corrupt reply or ReplyTimeout of
//     silence re-sends every unanswered request from the first one;
//   - a device NAK for request i while an earlier one is unanswered is a
//     consequence of the gap (INSTALL DATA after a lost chunk answers NAK
//     offset) and is dropped: request i is re-sent with the gap;
//   - a device NAK for the first unanswered request is final (*NAKError).
//
// A BUSY for an unanswered request extends the wait as in Do (up to
// SlowTimeout in all). Each re-send is preceded by a lone LF, as in Do. After Retries rounds
// of re-sending without the first unanswered request being answered,
// window gives up with ErrNoReply.
func (j *Jig) window(ctx context.Context, verb string, reqs [][]string, accept func(i int, rep *Reply) error) error {
	ws := j.newWindow(verb, reqs)
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
	verb               string
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

func (j *Jig) newWindow(verb string, reqs [][]string) *windowState {
	ws := &windowState{j: j, verb: verb, w: j.Window, timeout: j.ReplyTimeout, retries: j.Retries, slow: j.SlowTimeout, n: len(reqs)}
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
		ws.frames[i] = factory.Encode(seq, r[0], r[1:]...)
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
		return fmt.Errorf("%s: %w", ws.verb, err)
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
		return fmt.Errorf("%s: %w after %d attempts: %v", ws.verb, ErrNoReply, ws.retries+1, cause)
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
	gap, resent := false, false
	for k := ws.base; k < i; k++ {
		gap = gap || !ws.done[k]
	}
	if gap {
		r0 := ws.sent
		if err := ws.resend(i, ws.first[i], errors.New("reply lost")); err != nil {
			return err
		}
		resent = ws.sent > r0
	}
	switch f.Verb {
	case "NAK":
		return ws.nak(f, i, gap, resent)
	case "OK":
	default:
		return nil
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
// unanswered, resent that the gap was re-sent just now.
func (ws *windowState) nak(f factory.Frame, i int, gap, resent bool) error {
	if len(f.Args) == 0 {
		return fmt.Errorf("%s: NAK without a reason", ws.verb)
	}
	switch f.Args[0] {
	case factory.ReasonCRC, factory.ReasonBadChar, factory.ReasonSyntax, factory.ReasonTooLong, factory.ReasonCRCMissing:
		return ws.resend(ws.next, -1, fmt.Errorf("device could not read the frame: %s", strings.Join(f.Args, " ")))
	}
	if gap {
		// Caused by the gap. If the gap was re-sent just now, request i
		// follows it; otherwise a re-send round that already went out
		// after request i's first copy carries it.
		if resent {
			return ws.send(i, true)
		}
		return nil
	}
	return &NAKError{Verb: ws.verb, Reason: f.Args[0], Detail: strings.Join(f.Args[1:], " ")}
}
