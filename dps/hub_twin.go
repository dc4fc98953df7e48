package dps

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"
)

// Device twin over the hub connection: GET, reported patches, and the
// request/response matching by $rid (docs/dps.md).

// DesiredUpdate is a desired-properties patch, or (Full) the whole
// desired document fetched once connected.
type DesiredUpdate struct {
	Version int64
	Patch   json.RawMessage
	Full    bool
}

// Twin is a full twin document from GET.
type Twin struct {
	Desired         json.RawMessage `json:"desired"`
	Reported        json.RawMessage `json:"reported"`
	DesiredVersion  int64           `json:"-"`
	ReportedVersion int64           `json:"-"`
}

type twinReply struct {
	resp Response
	body []byte
}

// GetTwin fetches the full twin.
func (h *Hub) GetTwin(ctx context.Context) (*Twin, error) {
	_, body, err := h.twinRequest(ctx, "twin get", twinGetFmt, nil)
	if err != nil {
		return nil, err
	}
	return ParseTwin(body)
}

// ParseTwin decodes a twin GET body and the two $version numbers.
func ParseTwin(body []byte) (*Twin, error) {
	var t Twin
	if err := json.Unmarshal(body, &t); err != nil {
		return nil, &ProtocolError{What: "twin body", Raw: string(body), Err: err}
	}
	var v struct {
		Version *int64 `json:"$version"`
	}
	if len(t.Desired) > 0 {
		if err := json.Unmarshal(t.Desired, &v); err != nil {
			return nil, &ProtocolError{What: "twin desired", Raw: string(t.Desired), Err: err}
		}
		if v.Version != nil {
			t.DesiredVersion = *v.Version
		}
	}
	v.Version = nil
	if len(t.Reported) > 0 {
		if err := json.Unmarshal(t.Reported, &v); err != nil {
			return nil, &ProtocolError{What: "twin reported", Raw: string(t.Reported), Err: err}
		}
		if v.Version != nil {
			t.ReportedVersion = *v.Version
		}
	}
	return &t, nil
}

// UpdateReported sends a reported-properties patch (members set to null
// are deleted) and returns the new reported $version.
func (h *Hub) UpdateReported(ctx context.Context, patch any) (int64, error) {
	var body []byte
	switch p := patch.(type) {
	case json.RawMessage:
		body = p
	case []byte:
		body = p
	default:
		var err error
		if body, err = json.Marshal(patch); err != nil {
			return 0, fmt.Errorf("reported patch: %w", err)
		}
	}
	if !json.Valid(body) || !strings.HasPrefix(strings.TrimSpace(string(body)), "{") {
		return 0, &ConfigError{Field: "reported patch", Err: errors.New("must be a JSON object")}
	}
	resp, _, err := h.twinRequest(ctx, "twin patch", twinPatchFmt, body)
	if err != nil {
		return 0, err
	}
	return resp.Version, nil
}

// twinRequest runs one twin exchange, retrying on response timeout, 429
// and 5xx until ctx ends; a lost connection ends it with the cause.
func (h *Hub) twinRequest(ctx context.Context, op, format string, body []byte) (Response, []byte, error) {
	failures := 0
	var last error
	for {
		s, err := h.session()
		if err != nil {
			return Response{}, nil, err
		}
		rid := strconv.FormatUint(h.rid.Add(1), 10)
		ch := make(chan twinReply, 1)
		h.mu.Lock()
		h.waiters[rid] = ch
		h.mu.Unlock()
		resp, rbody, err := h.twinExchange(ctx, s, fmt.Sprintf(format, rid), body, ch)
		h.mu.Lock()
		delete(h.waiters, rid)
		h.mu.Unlock()
		if err == nil {
			if resp.Status < 300 {
				return resp, rbody, nil
			}
			err = parseStatusError(op, resp, rbody)
		}
		if ctx.Err() != nil {
			return Response{}, nil, ctxError(ctx, op, failures, err)
		}
		if _, gone := h.session(); gone != nil || !Retryable(err) {
			return Response{}, nil, err // a lost connection is not retried here
		}
		last = err
		d := h.cfg.Backoff.Delay(failures, h.cfg.Rand)
		var se *StatusError
		if errors.As(err, &se) && se.RetryAfter > 0 {
			d = max(d, clampRetryAfter(se.RetryAfter, 0, 300*time.Second))
		}
		failures++
		if err := h.cfg.Sleep(ctx, d); err != nil {
			return Response{}, nil, ctxError(ctx, op, failures, last)
		}
	}
}

func (h *Hub) twinExchange(ctx context.Context, s *session, topic string, body []byte, ch <-chan twinReply) (Response, []byte, error) {
	tctx, cancel := context.WithTimeout(ctx, h.cfg.RequestTimeout)
	defer cancel()
	if body == nil {
		body = []byte{}
	}
	s.publishAsync(topic, 0, body)
	select {
	case r := <-ch:
		return r.resp, r.body, nil
	case <-s.lost:
		return Response{}, nil, s.lostErr
	case <-h.done:
		return Response{}, nil, h.stopped()
	case <-tctx.Done():
		if ctx.Err() != nil {
			return Response{}, nil, ctx.Err()
		}
		return Response{}, nil, &TimeoutError{Op: "hub response to " + topic, Err: ErrNoResponse}
	}
}
