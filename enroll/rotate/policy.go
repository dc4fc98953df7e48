package rotate

import (
	"crypto/sha256"
	"crypto/x509"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"sort"
	"strconv"
	"strings"
	"time"
)

// ppm is one part per million of a certificate's lifetime; shares are held
// as integers so that a policy prints and parses back to the same value.
const ppm = 1_000_000

// Limits that keep any accepted policy from hammering the CA.
const (
	// MinRetry is the shortest wait between two failed renewal attempts,
	// whatever the policy says.
	MinRetry = time.Minute
	// maxDuration bounds every duration in a policy (ten years).
	maxDuration = 10 * 365 * 24 * time.Hour
)

// ErrPolicy wraps every policy parse or validation error.
var ErrPolicy = errors.New("renewal policy")

// Amount is a span of time given either as a share of the certificate's
// lifetime ("5%") or as a fixed duration ("30m", "2d"). The zero value is
// zero time.
type Amount struct {
	// PPM is the share of the lifetime in parts per million; used when Dur is 0.
	PPM int64
	// Dur is a fixed duration; it wins over PPM when non-zero.
	Dur time.Duration
}

// Of resolves the amount against a certificate lifetime.
func (a Amount) Of(lifetime time.Duration) time.Duration {
	if a.Dur != 0 {
		return a.Dur
	}
	return time.Duration(float64(lifetime) * float64(a.PPM) / ppm)
}

// String prints the amount in the grammar ParseAmount reads.
func (a Amount) String() string {
	if a.Dur != 0 {
		return formatDuration(a.Dur)
	}
	return formatPPM(a.PPM)
}

// Policy says when to renew a certificate. Build one with DefaultPolicy,
// ParsePolicy or Policy.Set; the zero value is not valid.
type Policy struct {
	// RenewAtPPM is the share of the lifetime after which renewal starts.
	RenewAtPPM int64
	// Jitter moves the renewal time earlier by a pseudo-random part of
	// this amount, so that a fleet issued at once does not renew at once.
	Jitter Amount
	// Retry is the wait after a failed attempt while the certificate is
	// still valid (it shortens as expiry nears) and after it has expired.
	Retry Amount
	// Margin starts renewal no later than this long before expiry, even if
	// RenewAt would come later. It never pulls renewal before half the
	// lifetime, so that short-lived certificates cannot renew back to back.
	Margin Amount
}

// DefaultPolicy renews at 2/3 of the lifetime with 5% jitter, retries
// hourly, and starts no later than 10% of the lifetime before expiry.
func DefaultPolicy() Policy {
	return Policy{
		RenewAtPPM: 666_667,
		Jitter:     Amount{PPM: 50_000},
		Retry:      Amount{Dur: time.Hour},
		Margin:     Amount{PPM: 100_000},
	}
}

// policyKeys are the grammar's keys, in the order String prints them.
var policyKeys = []string{"renew_at", "jitter", "retry", "margin"}

// parseAmountKey parses the value of an amount key (jitter, retry,
// margin), refusing a share of the lifetime above maxPPM.
func parseAmountKey(key, value string, maxPPM int64) (Amount, error) {
	a, err := ParseAmount(value)
	if err != nil {
		return a, fmt.Errorf("%w: %s %q: %v", ErrPolicy, key, value, err)
	}
	if a.Dur == 0 && a.PPM > maxPPM {
		return a, fmt.Errorf("%w: %s %q: at most %d%% of the lifetime", ErrPolicy, key, value, maxPPM/10_000)
	}
	return a, nil
}

// Set parses one key = value pair into p. Keys: renew_at (share only),
// jitter, retry, margin (share or duration).
func (p *Policy) Set(key, value string) error {
	value = strings.TrimSpace(value)
	switch key {
	case "renew_at":
		if looksLikeDuration(value) {
			return fmt.Errorf("%w: renew_at %q: give a share of the lifetime such as \"66%%\" or \"2/3\"; use margin for a time before expiry", ErrPolicy, value)
		}
		share, err := parseShare(value)
		if err != nil {
			return fmt.Errorf("%w: renew_at %q: %v", ErrPolicy, value, err)
		}
		if share < 10_000 || share > 990_000 {
			return fmt.Errorf("%w: renew_at %q: must be between 1%% and 99%% of the lifetime", ErrPolicy, value)
		}
		p.RenewAtPPM = share
	case "jitter":
		a, err := parseAmountKey(key, value, 250_000)
		if err != nil {
			return err
		}
		p.Jitter = a
	case "retry":
		a, err := parseAmountKey(key, value, 500_000)
		if err != nil {
			return err
		}
		switch {
		case a.Dur == 0 && a.PPM == 0:
			return fmt.Errorf("%w: retry %q: must be more than zero (a zero retry would hammer the CA)", ErrPolicy, value)
		case a.Dur != 0 && a.Dur < MinRetry:
			return fmt.Errorf("%w: retry %q: at least %v, so that a failing CA is not hammered", ErrPolicy, value, MinRetry)
		}
		p.Retry = a
	case "margin":
		a, err := parseAmountKey(key, value, 500_000)
		if err != nil {
			return err
		}
		p.Margin = a
	default:
		return fmt.Errorf("%w: unknown key %q (known: %s)", ErrPolicy, key, strings.Join(policyKeys, ", "))
	}
	return nil
}

// ParsePolicy reads the policy grammar: key = value pairs separated by
// commas, semicolons, newlines or spaces, values optionally in double
// quotes, unknown and repeated keys rejected. Keys not given keep their
// DefaultPolicy value; the empty string is the default policy.
//
//	renew_at = "66%", jitter = "5%", retry = "1h", margin = "24h"
func ParsePolicy(s string) (Policy, error) {
	p := DefaultPolicy()
	seen := map[string]bool{}
	toks, err := tokenize(s)
	if err != nil {
		return Policy{}, err
	}
	for i := 0; i < len(toks); i += 3 {
		key := toks[i]
		switch {
		case key.eq:
			return Policy{}, fmt.Errorf("%w: '=' without a key", ErrPolicy)
		case i+1 < len(toks) && !toks[i+1].eq:
			return Policy{}, fmt.Errorf("%w: expected '=' after %q, got %q", ErrPolicy, key.s, toks[i+1].s)
		case i+2 >= len(toks) || toks[i+2].eq:
			return Policy{}, fmt.Errorf("%w: %q has no value (write %s = VALUE)", ErrPolicy, key.s, key.s)
		case seen[key.s]:
			return Policy{}, fmt.Errorf("%w: key %q given twice", ErrPolicy, key.s)
		}
		seen[key.s] = true
		if err := p.Set(key.s, toks[i+2].s); err != nil {
			return Policy{}, err
		}
	}
	return p, nil
}

// token is a key, a value, or the '=' between them.
type token struct {
	s  string
	eq bool
}

// tokenize splits the grammar into keys, "=" and values.
func tokenize(s string) ([]token, error) {
	var toks []token
	for i := 0; i < len(s); {
		c := s[i]
		switch {
		case c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == ',' || c == ';':
			i++
		case c == '=':
			toks = append(toks, token{s: "=", eq: true})
			i++
		case c == '"':
			end := strings.IndexByte(s[i+1:], '"')
			if end < 0 {
				return nil, fmt.Errorf("%w: unterminated quote at byte %d", ErrPolicy, i)
			}
			toks = append(toks, token{s: s[i+1 : i+1+end]})
			i += end + 2
		default:
			j := i
			for j < len(s) && !strings.ContainsRune(" \t\n\r,;=\"", rune(s[j])) {
				j++
			}
			toks = append(toks, token{s: s[i:j]})
			i = j
		}
	}
	return toks, nil
}

// PolicyFromFields builds a policy from separate config fields (for a TOML
// [renewal] table). Empty fields keep their default.
func PolicyFromFields(renewAt, jitter, retry, margin string) (Policy, error) {
	p := DefaultPolicy()
	for i, v := range []string{renewAt, jitter, retry, margin} {
		if strings.TrimSpace(v) == "" {
			continue
		}
		if err := p.Set(policyKeys[i], v); err != nil {
			return Policy{}, err
		}
	}
	return p, nil
}

// PolicyFromJSON reads a desired-property value: a JSON object with any of
// the four keys as strings, e.g. {"renew_at":"80%","retry":"30m"}. Keys
// not given keep their value from base. null or {} gives base back.
func PolicyFromJSON(raw []byte, base Policy) (Policy, error) {
	var m map[string]any
	if err := json.Unmarshal(raw, &m); err != nil {
		return Policy{}, fmt.Errorf("%w: not a JSON object of strings: %v", ErrPolicy, err)
	}
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	p := base
	for _, k := range keys {
		if strings.HasPrefix(k, "$") { // twin metadata such as $version
			continue
		}
		s, ok := m[k].(string)
		if !ok {
			return Policy{}, fmt.Errorf("%w: %q must be a string such as \"66%%\" or \"1h\", got %v", ErrPolicy, k, m[k])
		}
		if err := p.Set(k, s); err != nil {
			return Policy{}, err
		}
	}
	return p, nil
}

// Validate reports whether p could have come out of the parser.
func (p Policy) Validate() error {
	_, err := ParsePolicy(p.String())
	return err
}

// String prints the policy in the grammar ParsePolicy reads.
func (p Policy) String() string {
	return fmt.Sprintf("renew_at = %q, jitter = %q, retry = %q, margin = %q",
		formatPPM(p.RenewAtPPM), p.Jitter.String(), p.Retry.String(), p.Margin.String())
}

// MarshalJSON gives the desired/reported property form.
func (p Policy) MarshalJSON() ([]byte, error) {
	return json.Marshal(map[string]string{
		"renew_at": formatPPM(p.RenewAtPPM),
		"jitter":   p.Jitter.String(),
		"retry":    p.Retry.String(),
		"margin":   p.Margin.String(),
	})
}

// UnmarshalJSON reads the form MarshalJSON writes, on top of the defaults.
func (p *Policy) UnmarshalJSON(b []byte) error {
	q, err := PolicyFromJSON(b, DefaultPolicy())
	if err != nil {
		return err
	}
	*p = q
	return nil
}

// ParseAmount reads "5%", "2.5%", "2/3" (shares of the lifetime, 0–100%)
// or a duration: Go syntax with an optional leading day count ("90m",
// "1h30m", "2d", "1d12h").
func ParseAmount(s string) (Amount, error) {
	s = strings.TrimSpace(s)
	if s == "" {
		return Amount{}, errors.New("empty value")
	}
	if looksLikeDuration(s) {
		d, err := parseDuration(s)
		if err != nil {
			return Amount{}, err
		}
		return Amount{Dur: d}, nil
	}
	share, err := parseShare(s)
	if err != nil {
		return Amount{}, err
	}
	return Amount{PPM: share}, nil
}

func looksLikeDuration(s string) bool {
	return !strings.ContainsAny(s, "%/") && strings.ContainsAny(s, "dhms")
}

// parseShare reads "66%", "66.6667%" or "2/3" into parts per million.
func parseShare(s string) (int64, error) {
	var f float64
	switch {
	case strings.HasSuffix(s, "%"):
		v, err := strconv.ParseFloat(strings.TrimSuffix(s, "%"), 64)
		if err != nil || strings.ContainsAny(s, "eEnNiIxX_+") {
			return 0, errors.New("not a percentage (want e.g. \"66%\")")
		}
		f = v / 100
	case strings.Contains(s, "/"):
		a, b, _ := strings.Cut(s, "/")
		n, err1 := strconv.ParseUint(a, 10, 32)
		d, err2 := strconv.ParseUint(b, 10, 32)
		if err1 != nil || err2 != nil || d == 0 {
			return 0, errors.New("not a fraction (want e.g. \"2/3\")")
		}
		f = float64(n) / float64(d)
	default:
		return 0, errors.New("want a share of the lifetime (\"66%\", \"2/3\") or a duration (\"1h\", \"2d\")")
	}
	if math.IsNaN(f) || f < 0 || f > 1 {
		return 0, errors.New("share must be between 0% and 100%")
	}
	return int64(math.Round(f * ppm)), nil
}

// parseDuration is time.ParseDuration plus a leading "Nd" day count;
// negative and absurd (> 10 years) values are refused.
func parseDuration(s string) (time.Duration, error) {
	var days time.Duration
	if i := strings.IndexByte(s, 'd'); i >= 0 {
		n, err := strconv.ParseUint(s[:i], 10, 16)
		if err != nil || n > 3650 {
			return 0, fmt.Errorf("bad day count in %q (want e.g. \"2d\" or \"1d12h\")", s)
		}
		days = time.Duration(n) * 24 * time.Hour
		s = s[i+1:]
	}
	var d time.Duration
	if s != "" {
		var err error
		d, err = time.ParseDuration(s)
		if err != nil {
			return 0, fmt.Errorf("not a duration (want e.g. \"1h\", \"30m\", \"2d\"): %v", err)
		}
		if d < 0 {
			return 0, errors.New("negative duration")
		}
	}
	total := days + d
	if total > maxDuration || total < 0 {
		return 0, errors.New("duration longer than ten years")
	}
	return total, nil
}

func formatPPM(v int64) string {
	s := strconv.FormatFloat(float64(v)/ppm*100, 'f', 4, 64)
	s = strings.TrimRight(strings.TrimRight(s, "0"), ".")
	return s + "%"
}

func formatDuration(d time.Duration) string {
	var b strings.Builder
	if days := d / (24 * time.Hour); days > 0 {
		fmt.Fprintf(&b, "%dd", days)
		d -= days * 24 * time.Hour
	}
	if d > 0 || b.Len() == 0 {
		s := d.String()
		if strings.HasSuffix(s, "m0s") {
			s = strings.TrimSuffix(s, "0s")
		}
		if strings.HasSuffix(s, "h0m") {
			s = strings.TrimSuffix(s, "0m")
		}
		b.WriteString(s)
	}
	return b.String()
}

// Reason says why a Plan is due when it is.
type Reason string

// Plan reasons.
const (
	// ReasonScheduled: the normal point in the lifetime (renew_at, jitter, margin).
	ReasonScheduled Reason = "scheduled"
	// ReasonRetry: a previous attempt failed; the certificate is still valid.
	ReasonRetry Reason = "retry"
	// ReasonExpired: the certificate has expired; renew at once, then every retry.
	ReasonExpired Reason = "expired"
	// ReasonMargin: the certificate is within the margin of expiry; renew at once.
	ReasonMargin Reason = "margin"
	// ReasonBadValidity: notAfter is not after notBefore; renew at once.
	ReasonBadValidity Reason = "invalid-validity"
)

// Plan is the next renewal attempt.
type Plan struct {
	// At is when to attempt; at or before now means at once.
	At time.Time `json:"at"`
	// Reason explains At.
	Reason Reason `json:"reason"`
}

// Due reports whether the attempt should start at now.
func (pl Plan) Due(now time.Time) bool { return !now.Before(pl.At) }

// Next plans the next renewal attempt for cert. lastFail is the time of the
// last failed attempt on this certificate, or zero. The result depends only
// on its arguments: the jitter is derived from a hash of the certificate
// (and of lastFail for retries), so it differs between devices yet stays
// put across restarts and shows the same time in status.
func (p Policy) Next(now time.Time, cert *x509.Certificate, lastFail time.Time) Plan {
	nb, na := cert.NotBefore, cert.NotAfter
	life := na.Sub(nb)
	if life <= 0 {
		return p.afterFailure(now, cert, lastFail, Plan{At: now, Reason: ReasonBadValidity})
	}
	renewAt := time.Duration(float64(life) * float64(p.RenewAtPPM) / ppm)
	sched := nb.Add(renewAt)
	if j := min(p.Jitter.Of(life), renewAt/2); j > 0 {
		sched = sched.Add(-time.Duration(unitHash(cert.Raw, nil) * float64(j)))
	}
	reason := ReasonScheduled
	if m := min(p.Margin.Of(life), life/2); na.Add(-m).Before(sched) {
		sched = na.Add(-m)
	}
	switch {
	case !now.Before(na):
		reason = ReasonExpired
	case !now.Before(sched) && !now.Before(na.Add(-min(p.Margin.Of(life), life/2))):
		reason = ReasonMargin
	}
	return p.afterFailure(now, cert, lastFail, Plan{At: sched, Reason: reason})
}

// afterFailure pushes plan out by the retry period after a failure that
// happened at or after the planned time.
func (p Policy) afterFailure(now time.Time, cert *x509.Certificate, lastFail time.Time, plan Plan) Plan {
	if lastFail.IsZero() || lastFail.Before(plan.At) {
		return plan
	}
	nb, na := cert.NotBefore, cert.NotAfter
	retry := max(p.Retry.Of(na.Sub(nb)), MinRetry)
	// Spread retries of a fleet that failed together by up to 20%.
	var stamp [8]byte
	binary.BigEndian.PutUint64(stamp[:], uint64(lastFail.UnixNano()))
	retry -= time.Duration(0.2 * unitHash(cert.Raw, stamp[:]) * float64(retry))
	if lastFail.Before(na) {
		// Still valid: retry more often as expiry nears, down to MinRetry.
		retry = min(retry, max(na.Sub(lastFail)/2, MinRetry))
		at := lastFail.Add(retry)
		reason := ReasonRetry
		if !now.Before(na) {
			reason = ReasonExpired
		}
		return Plan{At: at, Reason: reason}
	}
	return Plan{At: lastFail.Add(max(retry, MinRetry)), Reason: ReasonExpired}
}

// unitHash maps its inputs to a value in [0, 1).
func unitHash(a, b []byte) float64 {
	h := sha256.New()
	h.Write(a)
	h.Write(b)
	sum := h.Sum(nil)
	return float64(binary.BigEndian.Uint64(sum[:8])>>11) / (1 << 53)
}
