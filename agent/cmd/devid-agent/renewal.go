package main

import (
	"encoding/json"
	"fmt"
	"time"

	"devid/agent/config"
	"devid/agent/renewal"
	"devid/enroll/rotate"
)

// renewalOf returns the renewal section: the live agent's (status extra
// "renewal") or, without one, computed from the state files.
func renewalOf(cfg *config.Config, extra map[string]any) rotate.Status {
	if v, ok := extra["renewal"]; ok {
		var st rotate.Status
		if b, err := json.Marshal(v); err == nil && json.Unmarshal(b, &st) == nil {
			return st
		}
	}
	return renewal.StatusFromFiles(cfg, time.Now())
}

// printRenewal adds the renewal rows to `devid-agent status`.
func printRenewal(row func(k, v string), st rotate.Status) {
	path := st.Path
	switch {
	case st.Configured == "auto" && path == "auto":
		path = st.Why // "auto: decided at the first DPS registration, …"
	case path == rotate.PathNone:
		path = "none (nothing renews this certificate)"
		fallthrough
	default:
		if st.Why != "" {
			path += "; " + st.Why
		}
	}
	if st.Unproven {
		path += " (the current certificate was installed while the hub could not be reached; it has not connected yet)"
	}
	row("renewal path", path)
	if !st.Next.IsZero() {
		row("next renewal", fmt.Sprintf("%s (%s, %s)", st.Next.Format(time.RFC3339), st.Reason, humanUntil(time.Until(st.Next))))
	}
	if st.Failures > 0 {
		row("renewal failures", fmt.Sprintf("%d, last: %s", st.Failures, st.LastError))
	}
}
