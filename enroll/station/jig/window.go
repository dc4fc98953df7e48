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
	w := j.Window
	if w <= 0 {
		w = DefaultWindow
	}
	timeout, retries := j.ReplyTimeout, j.Retries
	if timeout <= 0 {
		timeout = DefaultReplyTimeout
	}
	if retries <= 0 {
		retries = DefaultRetries
	}
	n := len(reqs)
	frames := make([][]byte, n)
	index := make(map[int]int, n)
	for i, r := range reqs {
		seq := j.nextSeq()
		frames[i] = factory.Encode(seq, r[0], r[1:]...)
		index[seq] = i
	}
	done := make([]bool, n)
	first, last := make([]int, n), make([]int, n) // send order of each request's first and latest copy
	sent := 0
	send := func(i int, again bool) error {
		f := frames[i]
		if again {
			f = append([]byte("\n"), f...)
		} else {
			first[i] = sent
		}
		sent++
		last[i] = sent - 1
		if _, err := j.port.Write(f); err != nil {
			return fmt.Errorf("%s: %w", verb, err)
		}
		j.Sent += len(f)
		return nil
	}
	base, next, rounds := 0, 0, 0
	// resend re-sends the unanswered requests in [base, upto) whose latest
	// copy went out before limit in send order (all of them: limit = -1).
	resend := func(upto, limit int, cause error) error {
		var again []int
		for i := base; i < upto; i++ {
			if !done[i] && (limit < 0 || last[i] < limit) {
				again = append(again, i)
			}
		}
		if len(again) == 0 {
			return nil
		}
		rounds++
		if rounds > retries {
			return fmt.Errorf("%s: %w after %d attempts: %v", verb, ErrNoReply, retries+1, cause)
		}
		for _, i := range again {
			if err := send(i, true); err != nil {
				return err
			}
		}
		return nil
	}
	slow := j.SlowTimeout
	if slow <= 0 {
		slow = DefaultSlowTimeout
	}
	start := time.Now()
	deadline := start.Add(timeout)
	for base < n {
		for ; next < n && next < base+w; next++ {
			if err := send(next, false); err != nil {
				return err
			}
			deadline = time.Now().Add(timeout)
		}
		if err := ctx.Err(); err != nil {
			return err
		}
		line, err := j.r.Next(ctx, deadline, 0)
		if err != nil {
			switch {
			case errors.Is(err, factory.ErrLineTooLong):
				continue
			case errors.Is(err, factory.ErrDeadline):
				if err := resend(next, -1, errors.New("no reply")); err != nil {
					return err
				}
				deadline = time.Now().Add(timeout)
				continue
			}
			return err
		}
		j.Received += len(line) + 1
		f, err := factory.ParseFrame(line)
		if err != nil {
			if err := resend(next, -1, fmt.Errorf("corrupt reply: %w", err)); err != nil {
				return err
			}
			continue
		}
		i, ours := index[f.Seq]
		switch {
		case !f.CRC:
			continue // not from a device
		case f.Verb == "NAK" && f.Seq == factory.NoSeq:
			if len(f.Args) > 0 && f.Args[0] == factory.ReasonTimeout {
				continue // an older half frame, not ours
			}
			if err := resend(next, -1, fmt.Errorf("device could not read a frame: %s", strings.Join(f.Args, " "))); err != nil {
				return err
			}
			continue
		case !ours || done[i]:
			continue // stale or a duplicate
		case f.Verb == "BUSY":
			// The device works on request i (a CSR making a key): wait
			// on, up to SlowTimeout from the start, as Do does.
			deadline = time.Now().Add(timeout)
			if end := start.Add(slow); deadline.After(end) {
				deadline = end
			}
			continue
		}
		// Copies of earlier requests sent before this one's first copy
		// were answered; the unanswered ones lost their reply.
		gap, resent := false, false
		for k := base; k < i; k++ {
			gap = gap || !done[k]
		}
		if gap {
			r0 := sent
			if err := resend(i, first[i], errors.New("reply lost")); err != nil {
				return err
			}
			resent = sent > r0
		}
		if f.Verb == "NAK" {
			if len(f.Args) == 0 {
				return fmt.Errorf("%s: NAK without a reason", verb)
			}
			switch f.Args[0] {
			case factory.ReasonCRC, factory.ReasonBadChar, factory.ReasonSyntax, factory.ReasonTooLong, factory.ReasonCRCMissing:
				if err := resend(next, -1, fmt.Errorf("device could not read the frame: %s", strings.Join(f.Args, " "))); err != nil {
					return err
				}
				continue
			}
			if gap {
				// Caused by the gap. If the gap was re-sent just now,
				// request i follows it; otherwise a re-send round that
				// already went out after request i's first copy carries it.
				if resent {
					if err := send(i, true); err != nil {
						return err
					}
				}
				continue
			}
			return &NAKError{Verb: verb, Reason: f.Args[0], Detail: strings.Join(f.Args[1:], " ")}
		}
		if f.Verb != "OK" {
			continue
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
		done[i] = true
		for base < n && done[base] {
			base++
			rounds = 0
		}
		deadline = time.Now().Add(timeout)
	}
	return nil
}
